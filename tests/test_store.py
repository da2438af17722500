"""Saved results: written atomically; a corrupt, foreign or older file, or one whose medians
disagree with its own samples, is refused in one line (exit 2) by --resume, check and recommend."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from numatune.cli import main
from numatune.config import Configuration
from numatune.errors import NumatuneError
from numatune.profiles import find_engine_profile
from numatune.stats import Measurement
from numatune.store import TargetEngine, Trial, TuneResult, fingerprint, load_result, save_result, write_atomically
from numatune.synth import PRESETS, synthesize
from numatune.sysfs import Root
from numatune.topology import probe
from numatune.trial import ModelChoice
from numatune.tune import tune
from treegen import seed_machine, write_tree

GIB = 1 << 30


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.gguf"
    synthesize(path, replace(PRESETS["default"], hidden=256, intermediate=128, experts=4, top_k=2, layers=1), "Q8_0")
    return ModelChoice.from_file(path)


def tree(tmp_path, name="root", **changes):
    return probe(Root.open(str(write_tree(tmp_path / name, seed_machine(**changes)))))


def result_for(topology, model_label, engine=None, samples=(10.0, 11.0, 12.0)) -> TuneResult:
    trial = Trial(Configuration((0, 1), "bind", (0,)), Measurement.of(samples, "tok/s"), None, GIB, 0)
    return TuneResult(fingerprint(topology), model_label, (trial,), trial, None, False,
                      "2026-12-01T00:00:00+00:00", target_engine(engine) if engine else None)


def target_engine(name: str) -> TargetEngine:
    """As tune records the bundled engine placed for `name`: with its profile's synchronisation."""
    return TargetEngine(name, sync_barriers=find_engine_profile(name).sync_barriers)


def never_measure(*_args):
    raise AssertionError("nothing may be measured when the saved file is refused")


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


# ----- atomic writes ---------------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    path.write_text("old")

    def fail(*_args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomically(path, "new")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["result.json"]


def test_saved_result_round_trips_with_its_engine(tmp_path):
    t = tree(tmp_path)
    saved = save_result(result_for(t, "m", engine="llama.cpp"), tmp_path / "r.json")
    assert load_result(saved) == result_for(t, "m", engine="llama.cpp")
    assert sorted(os.listdir(tmp_path)) == ["r.json", "root"]


# ----- refused files ---------------------------------------------------------------------------

def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _saved(tmp_path, model, **edits) -> dict:
    data = result_for(tree(tmp_path, "saved"), model.label).to_json()
    data.update(edits)
    return data


@pytest.mark.parametrize("case, needle", [
    ("truncated", "not a numatune tuning result"),
    ("list", "not a numatune tuning result"),
    ("older", "an older numatune wrote it"),
    ("median", "corrupt result: trial 0: tokens_per_s: median"),
    ("n", "corrupt result: trial 0: tokens_per_s: n"),
])
def test_load_refuses_damaged_or_older_files_in_one_line(tmp_path, small_model, case, needle):
    data = _saved(tmp_path, small_model)
    if case == "truncated":
        content = json.dumps(data)[:200]
    elif case == "list":
        content = [data]
    elif case == "older":
        content = dict(data, schema_version=0)
    else:
        data["trials"][0]["tokens_per_s"][case] = 99.0 if case == "median" else 7
        content = data
    path = _write(tmp_path / "r.json", content)
    with pytest.raises(NumatuneError) as info:
        load_result(path)
    assert needle in str(info.value) and one_line(str(info.value)) and str(path) in str(info.value)


def test_a_consistent_file_loads(tmp_path, small_model):
    """The check above is about disagreement, not about any edit: a file rewritten with
    consistent figures loads."""
    data = _saved(tmp_path, small_model)
    data["trials"][0]["tokens_per_s"] = Measurement.of([1.0, 2.0, 3.0, 4.0], "tok/s").to_json()
    assert load_result(_write(tmp_path / "r.json", data)).trials[0].tokens_per_s.median == 2.5


def test_resume_refuses_a_file_whose_medians_disagree_with_its_samples(tmp_path, small_model):
    t = tree(tmp_path, "saved")
    data = result_for(t, small_model.label).to_json()
    data["winner"]["tokens_per_s"]["median"] = 50.0
    path = _write(tmp_path / "r.json", data)
    with pytest.raises(NumatuneError, match=r"--resume: .*corrupt result: tokens_per_s: median 50.0"):
        tune(t, small_model, 10, out=path, resume=True, measure=never_measure)


def test_resume_refuses_another_host(tmp_path, small_model):
    path = save_result(result_for(tree(tmp_path, "other", cores_per_node=16), small_model.label), tmp_path / "r.json")
    with pytest.raises(NumatuneError, match="measured on another host") as info:
        tune(tree(tmp_path), small_model, 10, out=path, resume=True, measure=never_measure)
    assert one_line(str(info.value))


def test_resume_refuses_another_engine(tmp_path, small_model):
    t = tree(tmp_path)
    path = save_result(result_for(t, small_model.label, engine="llama.cpp"), tmp_path / "r.json")
    with pytest.raises(NumatuneError, match=r"measured with the bundled engine placed for llama.cpp, 42 barriers per layer, "
                       r"not the bundled engine\b"):
        tune(t, small_model, 10, out=path, resume=True, measure=never_measure)
    with pytest.raises(NumatuneError, match="placed for llama.cpp, 42 barriers per layer, not the bundled engine "
                       "placed for ktransformers, 1 barrier per layer"):
        tune(t, small_model, 10, target=find_engine_profile("ktransformers"), out=path, resume=True,
             measure=never_measure)


def test_resume_of_the_same_engine_is_accepted(tmp_path, small_model):
    t = tree(tmp_path)
    path = save_result(result_for(t, small_model.label, engine="llama.cpp"), tmp_path / "r.json")
    calls = []

    def measure(config, model, stage, plan, target):
        calls.append(config)
        return Trial(config, Measurement.of([1.0]), None, GIB, stage)
    run = tune(t, small_model, 1000, target=find_engine_profile("llama.cpp"), out=path, resume=True, measure=measure)
    assert run.result.engine == target_engine("llama.cpp") and len(run.result.trials) == 1 + len(calls)


def test_cli_resume_and_check_of_a_corrupt_file_exit_2_in_one_line(tmp_path, small_model, capsys):
    path = _write(tmp_path / "bad.json", '{"schema_version": 1, "trials": [')
    for argv in (["tune", "--model", str(small_model.path), "--out", str(path), "--resume", "--json"],
                 ["check", str(path)],
                 ["recommend", "--engine", "llama.cpp", "--from", str(path)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(path) in err and "Traceback" not in err, argv
    assert path.read_text() == '{"schema_version": 1, "trials": ['     # nothing rewritten
