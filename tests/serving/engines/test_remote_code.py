"""A base that ships its own modeling code (as InternLM2 does) is loaded only with an explicit opt-in:
a clear error without it, and with it training, registration and serving work like any other model."""

from __future__ import annotations

import json
import shutil

import pytest

from adapterhub.errors import ConfigError
from adapterhub.registry import Registry
from adapterhub.settings import Settings

# A "remote code" architecture written here: Llama's modules under its own model_type and class names,
# loaded through auto_map from files beside the weights, as trust_remote_code models are.
CONFIGURATION = '''
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote"
'''
MODELING = '''
from transformers import LlamaForCausalLM

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''


def make_remote(d):
    """Turn the Llama model directory ``d`` into a remote-code model: its code files beside the weights,
    loaded through ``auto_map``."""
    (d / "configuration_tiny_remote.py").write_text(CONFIGURATION)
    (d / "modeling_tiny_remote.py").write_text(MODELING)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="tiny_remote", architectures=["TinyRemoteForCausalLM"],
               auto_map={"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                         "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def remote_model(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("remote") / "tiny-remote"
    shutil.copytree(tiny_model, d)
    return make_remote(d)


def test_remote_code_needs_the_opt_in_then_trains_and_serves(remote_model, dataset, tmp_path):
    from adapterhub.serving.api import build_engine
    from adapterhub.serving.config import ServeConfig
    from adapterhub.training.run import train
    from tests.training.test_run import config

    cfg = config(remote_model, dataset, **{"train.max_steps": 3, "eval.inputs": []})
    with pytest.raises(ConfigError, match=r"ships its own modeling code \(configuration_tiny_remote.py, "
                                          r"modeling_tiny_remote.py\).*model.trust_remote_code=true"):
        train(cfg, Settings(), output=tmp_path / "refused")
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        build_engine(ServeConfig(base=str(remote_model)), Settings(), None)

    trusted = config(remote_model, dataset, **{"train.max_steps": 3, "eval.inputs": [],
                                               "model.trust_remote_code": True})
    result = train(trusted, Settings(), output=tmp_path / "run")
    m = Registry.open(Settings()).manifest(result.record.ref)
    assert m.training["config"]["model"]["trust_remote_code"] is True
    engine, _ = build_engine(ServeConfig(base=str(remote_model), trust_remote_code=True), Settings(), None)
    assert type(engine.model).__name__ == "TinyRemoteForCausalLM"
    engine.load_adapter("ad", Registry.open(Settings()).path(result.record))
    assert "ad" in engine.loaded_adapters()
