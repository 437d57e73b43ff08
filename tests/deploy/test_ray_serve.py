"""Ray Serve scale-out: 2 replicas on CPU; requests for an adapter stick to the replica that has it."""

from __future__ import annotations

import importlib.util
import time
from collections import defaultdict

import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.settings import Settings

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray[serve] not installed")]


def test_two_replicas_route_each_adapter_to_one_replica(registry, tiny_adapters, tiny_model, _isolated_home):
    import httpx
    import ray
    from ray import serve

    from adapterhub.deploy.ray.ray_serve import build

    base = resolve_model(str(tiny_model), Settings()).identity()
    for i, path in enumerate(tiny_adapters):
        registry.register(path, f"ad{i}", base_model=base)
    registry.set_alias("ad0@1", "production")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"ADAPTERHUB_HOME": str(_isolated_home), "HF_HUB_OFFLINE": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 18765})
        serve.run(build(str(tiny_model), replicas=2, home=str(_isolated_home), max_loaded=4, replica_cpus=0.5),
                  route_prefix="/v1/chat/completions")
        url = "http://127.0.0.1:18765/v1/chat/completions"
        served_by = defaultdict(lambda: defaultdict(int))
        answers = defaultdict(set)

        def ask(c, model):
            r = c.post(url, json={"model": model, "max_tokens": 4, "temperature": 0,
                                  "messages": [{"role": "user", "content": "hello"}]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == model  # the client sees the name it asked for
            answers[model].add(body["choices"][0]["message"]["content"])
            return body["replica"]

        with httpx.Client(timeout=120) as c:
            # Warm-up: the first request for each adapter loads it on one replica. Ray learns which replica
            # holds which key from the replicas' reports (pushed every 0.1 s, then broadcast), so requests
            # sent right after a load may not know it yet; give the reports time to arrive on a busy machine.
            for i in range(4):
                ask(c, f"ad{i}")
            time.sleep(3)
            for _ in range(8):
                for i in range(4):
                    served_by[f"ad{i}"][ask(c, f"ad{i}")] += 1
            # Another spelling of the same version shares its key, hence its replica and its loaded copy.
            same = {ask(c, ref) for ref in ("ad0@1", "ad0@production")}
            stats = c.get(url + "/stats").json()
        assert all(len(v) == 1 for v in answers.values())  # each adapter answers consistently
        assert len({next(iter(answers[f"ad{i}"])) for i in range(4)}) > 1  # …and differently from the others
        assert len(stats) == 2
        loads = defaultdict(int)
        for s in stats:
            for key, n in s["loads"].items():
                loads[key] += n
        # Routing keys are resolved versions, never the raw model string.
        assert all("#" in key for key in loads), dict(loads)
        assert {k.split("#")[0] for k in loads} == {f"ad{i}@1" for i in range(4)}
        # Affinity, measured after warm-up over 32 requests: Ray's multiplexing is a preference (a busy
        # replica is skipped), so allow one stray request in all; without affinity about half would stray.
        on_main = sum(max(replicas.values()) for replicas in served_by.values())
        assert on_main >= 31, {m: dict(r) for m, r in served_by.items()}
        assert same == {max(served_by["ad0"], key=served_by["ad0"].get)}
        assert sum(loads.values()) <= 5, dict(loads)  # each version loaded once (one stray allowed)
    finally:
        serve.shutdown()
        ray.shutdown()
