"""What ``pip install adapterhub`` puts into a user's site-packages: one top-level package, so
``import training`` or ``import export`` in the user's own project never collides with ours."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_one_top_level_package_with_its_data(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy: setuptools leaves build/ in the tree it builds
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv*", ".cache", ".git", "build", "*.egg-info",
                                                             "__pycache__", ".*_cache", "runs", "out"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("adapterhub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"adapterhub"}
    # Every package of the tree is in it, with the files it reads at run time.
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "adapterhub").rglob("__init__.py")}
    assert packages <= {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    for data in ("adapterhub/training/configs/self_cognition_lumen.yaml",
                 "adapterhub/training/configs/deepspeed/zero3.json",
                 "adapterhub/deploy/openxlab/template/app.py", "adapterhub/py.typed"):
        assert data in names, data
