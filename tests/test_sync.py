"""Emulated synchronisation: the bundled engine, standing in for another engine, makes its workers
meet at that engine's barriers per layer (profiles' `sync`); tune records the count and check
re-measures with the recorded one."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from numatune.cli import main
from numatune.config import Configuration
from numatune.engine import Engine
from numatune.errors import NumatuneError
from numatune.profiles import ProfileError, SyncSpec, engine_profiles, find_engine_profile
from numatune.search import Stage
from numatune.stats import Measurement
from numatune.store import TargetEngine, Trial, TuneResult, fingerprint, load_result, save_result
from numatune.synth import PRESETS, synthesize
from numatune.trial import ModelChoice, trial_argv
from numatune.tune import check, tune
from test_launch import VALID
from test_schemas import validator

CPUS = sorted(os.sched_getaffinity(0))[:2]
GIB = 1 << 30


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("sync") / "small.gguf"
    synthesize(path, replace(PRESETS["default"], hidden=256, intermediate=128, experts=4, top_k=2, layers=3), "Q8_0")
    return ModelChoice.from_file(path)


# ----- the engine ------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, len(CPUS), 8])
def test_every_layer_of_every_token_meets_at_the_barriers_asked(model, host, workers):
    """Eight workers on two CPUs: a barrier must also be passed when peers were preempted."""
    engine = Engine.load(model.path, (CPUS * 8)[:workers], "bind", [0], topology=host, sync_barriers=5)
    assert engine.sync_barriers == 5 and engine.barriers_passed == 0
    engine.decode_bench(tokens=3, warmup=2)
    assert engine.barriers_passed == (3 + 2) * engine.layers * 5
    engine.moe_forward(1, np.ones(engine.model.hidden, dtype=np.float32))
    assert engine.barriers_passed == (3 + 2) * engine.layers * 5 + 5


def test_no_barriers_unless_asked_and_the_output_is_unchanged(model, host):
    plain = Engine.load(model.path, CPUS, "bind", [0], topology=host)
    synced = Engine.load(model.path, CPUS, "bind", [0], topology=host, sync_barriers=3)
    x = np.linspace(-1, 1, plain.model.hidden, dtype=np.float32)
    assert plain.moe_forward(0, x).tobytes() == synced.moe_forward(0, x).tobytes()
    plain.decode_bench(tokens=2, warmup=0)
    assert plain.barriers_passed == 0 and plain.decode_bench(tokens=1, warmup=0)["sync_barriers"] == 0


def test_a_negative_barrier_count_is_refused(model, host):
    with pytest.raises(NumatuneError, match="sync barriers per layer: -1"):
        Engine.load(model.path, CPUS, "bind", [0], topology=host, sync_barriers=-1)


def test_bench_reports_the_barriers_it_ran(model, capsys):
    code = main(["bench", "--model", str(model.path), "--cpus", ",".join(map(str, CPUS)), "--policy", "bind",
                 "--nodes", "0", "--tokens", "2", "--repeats", "1", "--no-bandwidth", "--sync-barriers", "7",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    validator("bench").validate(data)
    assert data["sync_barriers"] == 7


# ----- profiles --------------------------------------------------------------------------------

def test_shipped_profiles_say_how_their_engine_synchronises():
    profiles = engine_profiles()
    assert profiles["llama.cpp"].sync.per == "graph-node" and profiles["llama.cpp"].sync_barriers > 30
    assert profiles["ktransformers"].sync == SyncSpec("moe-layer", 1)
    assert profiles["numatune"].sync is None and profiles["numatune"].sync_barriers == 0


@pytest.mark.parametrize("sync, needle", [
    ("sync: {per: graph-node, barriers_per_layer: -1}", "sync: field 'barriers_per_layer' must be an integer ≥ 0"),
    ("sync: {per: graph-node, barriers_per_layer: many}", "sync: field 'barriers_per_layer'"),
    ("sync: {per: token, barriers_per_layer: 3}", "sync: field 'per' must be graph-node or moe-layer"),
    ("sync: {barriers_per_layer: 3}", "sync: field 'per' is missing"),
    ("sync: 42", "field 'sync' must be a mapping"),
])
def test_a_bad_sync_field_is_one_line_naming_file_and_field(tmp_path, sync, needle):
    (tmp_path / "demo.yaml").write_text(VALID + sync + "\n")
    with pytest.raises(ProfileError) as info:
        engine_profiles(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "demo.yaml") in message and needle in message


def test_a_good_sync_field_is_read(tmp_path):
    (tmp_path / "demo.yaml").write_text(VALID + "sync: {per: moe-layer, barriers_per_layer: 2}\n")
    assert engine_profiles(tmp_path)["demo"].sync_barriers == 2


def test_barriers_are_counted_per_architecture_where_the_profile_says(tmp_path):
    (tmp_path / "demo.yaml").write_text(VALID + "sync: {per: graph-node, barriers_per_layer: 4, by_arch: {deepseek2: 9}}\n")
    demo = engine_profiles(tmp_path)["demo"]
    assert demo.for_arch("deepseek2").sync_barriers == 9
    assert demo.for_arch("qwen3moe").sync_barriers == 4 and demo.for_arch(None).sync_barriers == 4
    llama = find_engine_profile("llama.cpp")
    assert llama.for_arch("deepseek2").sync_barriers > llama.for_arch("qwen3moe").sync_barriers == llama.sync_barriers
    assert find_engine_profile("ktransformers").for_arch("deepseek2").sync == SyncSpec("moe-layer", 1)


@pytest.mark.parametrize("by_arch", ["[deepseek2]", "{deepseek2: -3}", "{deepseek2: lots}"])
def test_a_bad_per_architecture_count_is_one_line(tmp_path, by_arch):
    (tmp_path / "demo.yaml").write_text(VALID + f"sync: {{per: graph-node, barriers_per_layer: 4, by_arch: {by_arch}}}\n")
    with pytest.raises(ProfileError) as info:
        engine_profiles(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "sync: field 'by_arch' must be a mapping of architecture" in message


@pytest.mark.parametrize("preset", ["deepseek-v3", "default"])
def test_tune_emulates_the_barriers_of_the_models_architecture(tmp_path, host, preset, monkeypatch):
    """run_tune reads the model's architecture: a deepseek2 file is emulated with deepseek2's count."""
    import numatune.tune as tune_module
    from numatune import workflow
    shape = replace(PRESETS[preset], hidden=256, intermediate=128, experts=8, top_k=2, layers=2)
    synthesize(tmp_path / "m.gguf", shape, "Q8_0")
    seen = {}

    def fake_tune(topology, model, budget, target, numa_build, out, resume, **kwargs):
        seen.update(target=target, engine=kwargs["engine"])
        raise SystemExit(0)
    monkeypatch.setattr(tune_module, "tune", fake_tune)
    with pytest.raises(SystemExit):
        workflow.run_tune(host, ModelChoice.from_file(tmp_path / "m.gguf"), 10, "llama.cpp", None, None, False,
                          bundled=True)
    expected = find_engine_profile("llama.cpp").for_arch(shape.architecture).sync_barriers
    assert expected == (65 if preset == "deepseek-v3" else 42)
    assert seen["target"].sync_barriers == seen["engine"].sync_barriers == expected


# ----- trials, results, check ------------------------------------------------------------------

def test_the_trial_child_is_told_the_targets_barriers(model, tmp_path):
    config = Configuration(tuple(CPUS), "bind", (0,))
    argv = trial_argv(model.path, config, Stage(8, 3), tmp_path / "t.json", sync_barriers=42)
    assert argv[argv.index("--sync-barriers") + 1] == "42"
    assert "--sync-barriers" not in trial_argv(model.path, config, Stage(8, 3), tmp_path / "t.json")


def test_tune_records_the_emulated_barriers_and_check_remeasures_with_them(tmp_path, model, host):
    seen = []

    def measure(config, model_, stage, plan, target):
        seen.append(target.sync_barriers)
        return Trial(config, Measurement.of([10.0, 10.0, 10.0]), None, GIB, stage)
    llama = find_engine_profile("llama.cpp")
    out = tmp_path / "tuned.json"
    run = tune(host, model, 1000, target=llama, out=out, measure=measure)
    assert set(seen) == {llama.sync_barriers}
    assert run.result.engine == TargetEngine("llama.cpp", sync_barriers=llama.sync_barriers)
    saved = json.loads(out.read_text())
    assert saved["engine"]["sync_barriers"] == llama.sync_barriers
    validator("tune").validate(saved)

    # A result measured with another count (an older profile) is re-measured with that count.
    older = replace(load_result(out), engine=TargetEngine("llama.cpp", sync_barriers=9))
    save_result(older, tmp_path / "older.json")
    seen.clear()
    check(host, tmp_path / "older.json", measure=measure)
    assert seen and set(seen) == {9}


def test_resume_refuses_a_result_with_other_emulated_barriers(tmp_path, model, host):
    trial = Trial(Configuration(tuple(CPUS), "bind", (0,)), Measurement.of([1.0]), None, GIB, 0)
    result = TuneResult(fingerprint(host), model.label, (trial,), trial, None, False, "2026-12-07T00:00:00+00:00",
                        TargetEngine("llama.cpp", sync_barriers=9))
    path = save_result(result, tmp_path / "r.json")
    with pytest.raises(NumatuneError, match="placed for llama.cpp, 9 barriers per layer, not the bundled engine "
                                            "placed for llama.cpp, 42 barriers per layer"):
        tune(host, model, 10, target=find_engine_profile("llama.cpp"), out=path, resume=True,
             measure=lambda *a: pytest.fail("nothing may be measured"))
