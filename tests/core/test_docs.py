"""The README stays in sync with the code: its config reference is the generated one."""

from pathlib import Path

from adapterhub.training.config_doc import BEGIN, END, render_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    assert BEGIN in text and END in text
    embedded = text[text.index(BEGIN): text.index(END) + len(END)]
    assert embedded == render_reference(), "run `python -m adapterhub.training.config_doc` and paste it into README.md"


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
