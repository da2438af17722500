"""Trials of an external engine: the parsers on the engines' real output formats, and real
processes — a fake engine (tests/fake_engine.py) taking its thread count the way each profile
passes it, and the real llama-bench that tools/build-llama-bench.sh builds (CI builds it before
the tests; without it these tests fail, they do not skip)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from numatune.cli import main
from numatune.errors import ProfileError
from numatune.external import PARSERS, NoMetric, regex_parser
from numatune.profiles import parse_engine_profile, read_yaml
from numatune.store import load_result
from numatune.synth import PRESETS
from numatune.trial import ModelChoice

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).resolve().parent / "fake_engine.py"


# ----- parsers -------------------------------------------------------------------------------

LLAMA_BENCH_JSON = """[
  {"build_commit": "abc1234", "n_threads": 2, "n_prompt": 512, "n_gen": 0, "avg_ts": 80.5, "stddev_ts": 1.0,
   "samples_ts": [80.0, 81.0]},
  {"build_commit": "abc1234", "n_threads": 2, "n_prompt": 0, "n_gen": 16, "avg_ts": 12.25, "stddev_ts": 0.3,
   "samples_ts": [12.0, 12.5, 12.25]}
]
"""


def test_llama_bench_json_gives_the_generation_samples():
    assert PARSERS["llama-bench-json"]("load_backend: loaded CPU\n" + LLAMA_BENCH_JSON, 2) == [12.0, 12.5, 12.25]
    with pytest.raises(NoMetric, match="ran 2 threads, 4 were asked"):
        PARSERS["llama-bench-json"](LLAMA_BENCH_JSON, 4)
    with pytest.raises(NoMetric, match="no generation test"):
        PARSERS["llama-bench-json"](json.dumps([json.loads(LLAMA_BENCH_JSON)[0]]), 2)
    with pytest.raises(NoMetric):
        PARSERS["llama-bench-json"]("error: failed to load model", 2)


@pytest.mark.parametrize("parser, text, expected", [
    ("llama-timings", "llama_perf_context_print: prompt eval time =  50.00 ms /  8 tokens (  6.25 ms per token,"
                      "   160.00 tokens per second)\nllama_perf_context_print:        eval time =  1000.00 ms /  63 runs"
                      "   (   15.87 ms per token,    63.00 tokens per second)", [63.0]),
    ("ktransformers", "prompt eval rate:     120.5 tokens/s\neval count:           64 token(s)\n"
                      "eval duration:        5.1s\neval rate:            12.549019607843137 tokens/s", [12.549019607843137]),
    ("vllm-bench", "Request throughput (req/s):              4.80\nOutput token throughput (tok/s):         613.9\n"
                   "Total Token throughput (tok/s):          3069.4", [613.9]),
    ("vllm-bench", "Throughput: 1.25 requests/s, 640.00 total tokens/s, 160.00 output tokens/s", [160.0]),
    ("sglang-bench", "Prefill. latency: 0.1 s, throughput:   5000.00 token/s\n"
                     "Decode.  median latency: 0.04975 s, median throughput:     20.10 token/s", [20.1]),
])
def test_throughput_lines_of_each_engine(parser, text, expected):
    assert PARSERS[parser](text, None) == pytest.approx(expected)
    with pytest.raises(NoMetric):
        PARSERS[parser]("nothing measured here", None)


def test_metric_regex_takes_every_match_as_a_sample():
    assert regex_parser(r"decode: ([0-9.]+) tok/s")("decode: 1.5 tok/s\nx\ndecode: 2.5 tok/s") == [1.5, 2.5]
    with pytest.raises(NoMetric, match="not a number"):
        regex_parser(r"decode: (\S+)")("decode: fast")


def test_a_profile_naming_an_unknown_parser_is_refused():
    data = read_yaml(ROOT / "profiles" / "engines" / "llama.cpp.yaml")
    data["benchmark"] = dict(data["benchmark"], parser="tea-leaves")
    with pytest.raises(ProfileError, match="benchmark.*'parser'"):
        parse_engine_profile(data, "x.yaml")
    data["benchmark"] = dict(data["benchmark"], parser="llama-bench-json", command=["llama-bench", "{prompt}"])
    with pytest.raises(ProfileError, match=r"command\[1\].*'{prompt}'"):
        parse_engine_profile(data, "x.yaml")


# ----- real processes: the fake engine ---------------------------------------------------------

@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from numatune.fullmodel import synthesize_complete
    path = tmp_path_factory.mktemp("model") / "complete.gguf"
    synthesize_complete(path, replace(PRESETS["qwen3-30b-a3b"], layers=1, experts=8), "Q8_0")
    return path


def fake_as(tmp_path: Path, name: str) -> Path:
    """The fake engine under a program name (a parser can be chosen by the program's name)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    link = tmp_path / name
    link.symlink_to(FAKE)
    return link


def logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def tune_json(capsys, *argv) -> tuple[int, dict, str]:
    code = main(["tune", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def test_llama_cli_command_is_placed_and_threaded_like_launch(tmp_path, small_model, capsys):
    log, out = tmp_path / "log.jsonl", tmp_path / "r.json"
    cli = fake_as(tmp_path, "llama-cli")
    code, data, err = tune_json(capsys, "--engine", "llama.cpp", "--model", str(small_model), "--budget", "30",
                                "--out", str(out), "--json", "--", str(cli), "-m", str(small_model), "--log", str(log))
    assert code == 0, err
    assert "trials: llama.cpp itself" in err
    runs = logged(log)
    trials = [t for t in data["trials"] if t["error"] is None]
    assert trials and len(runs) >= len(trials)
    for run in runs:           # each run: -t N and --numa numactl set, affinity the configuration's CPUs
        assert run["argv"][run["argv"].index("-t") + 1] == str(run["threads"])
        assert run["argv"][run["argv"].index("--numa") + 1] == "numactl"
    by_threads = {len(t["config"]["cpus"]): t for t in trials}
    for t in trials:
        assert set(t["config"]["cpus"]) in [set(r["cpus"]) for r in runs if r["threads"] == len(t["config"]["cpus"])]
        assert t["tokens_per_s"]["median"] == pytest.approx(40.0 * len(t["config"]["cpus"]), abs=0.1)
    assert len(data["winner"]["config"]["cpus"]) == max(by_threads)         # the fake is fastest with most threads
    saved = load_result(out)
    assert saved.engine.name == "llama.cpp" and saved.engine.parser == "llama-timings"
    assert saved.engine.binary.path == str(FAKE) and len(saved.engine.binary.sha256) == 64


def test_ktransformers_cpu_infer_counts_the_submitting_thread(tmp_path, small_model, capsys):
    log = tmp_path / "log.jsonl"
    code, data, err = tune_json(capsys, "--engine", "ktransformers", "--model", str(small_model), "--budget", "20",
                                "--out", str(tmp_path / "r.json"), "--json", "--", str(FAKE), "--format",
                                "ktransformers", "--log", str(log))
    assert code == 0, err
    for run in logged(log):
        assert run["argv"][run["argv"].index("--cpu_infer") + 1] == str(run["threads"] + 1)
    assert data["engine"]["parser"] == "ktransformers"


def test_metric_regex_and_threads_in_the_environment(tmp_path, small_model, capsys):
    log = tmp_path / "log.jsonl"
    code, data, err = tune_json(capsys, "--engine", "openmp", "--model", str(small_model), "--budget", "20",
                                "--metric", r"decode: ([0-9.]+) tok/s", "--out", str(tmp_path / "r.json"), "--json",
                                "--", str(FAKE), "--format", "custom", "--log", str(log))
    assert code == 0, err
    assert all("-t" not in run["argv"] and run["threads"] > 0 for run in logged(log))   # OMP_NUM_THREADS
    assert data["engine"]["metric"] == r"decode: ([0-9.]+) tok/s" and data["winner"]


def test_failed_silent_and_hung_runs_are_failed_trials_and_the_search_goes_on(tmp_path, small_model, capsys):
    from numatune.sysfs import Root
    from numatune.topology import probe
    from numatune.search import build_space
    space = build_space(probe(Root.open("/")), small_model.stat().st_size)
    counts = sorted({c.threads for c in space.candidates})
    if len(counts) < 2:
        pytest.fail(f"this test needs at least two thread counts to try, the host gives {counts}")
    results = {}
    for mode in ("--fail-at", "--silent-at", "--hang-at"):
        code, data, err = tune_json(capsys, "--engine", "llama.cpp", "--model", str(small_model), "--budget", "12",
                                    "--out", str(tmp_path / f"{mode}.json"), "--json", "--",
                                    str(fake_as(tmp_path / mode, "llama-cli")), mode, str(counts[0]))
        errors = [t["error"] for t in data["trials"] if len(t["config"]["cpus"]) == counts[0]]
        ok = [t for t in data["trials"] if t["error"] is None]
        assert code == 0 and errors and all(errors) and ok, (mode, err, data)
        results[mode] = errors[0]
    assert results["--fail-at"].startswith("exit status 3: ") and "failed to allocate 12 GiB" in results["--fail-at"]
    assert "no throughput" in results["--silent-at"] and "loaded" in results["--silent-at"]
    assert results["--hang-at"].startswith("ran past its share of the budget")


def test_check_refuses_another_binary_and_resume_another_command(tmp_path, small_model, capsys):
    engine = tmp_path / "llama-cli"
    shutil.copy(FAKE, engine)
    out = tmp_path / "r.json"
    code, _, err = tune_json(capsys, "--engine", "llama.cpp", "--model", str(small_model), "--budget", "10",
                             "--out", str(out), "--json", "--", str(engine))
    assert code == 0, err
    assert main(["check", str(out), "--tolerance", "0.5"]) == 0, capsys.readouterr()[1]
    capsys.readouterr()
    code, _, err = tune_json(capsys, "--engine", "llama.cpp", "--model", str(small_model), "--budget", "10",
                             "--out", str(out), "--resume", "--", str(engine), "--format", "custom")
    assert code == 2 and "--resume" in err and "another command or binary" in err
    engine.write_text(engine.read_text() + "# rebuilt\n")
    assert main(["check", str(out)]) == 2
    err = capsys.readouterr()[1]
    assert err.count("\n") == 1 and "not the binary that was measured" in err and "changed" in err


def test_a_command_needs_a_model_and_a_metric_needs_a_command(tmp_path, capsys):
    assert main(["tune", "--engine", "llama.cpp", "--", str(FAKE)]) == 2
    assert "--model" in capsys.readouterr()[1]
    assert main(["tune", "--engine", "ktransformers", "--model", str(FAKE), "--metric", "x"]) == 2
    assert "--metric" in capsys.readouterr()[1]


# ----- the real llama-bench ------------------------------------------------------------------

def llama_bench() -> Path:
    done = subprocess.run(["bash", str(ROOT / "tools" / "build-llama-bench.sh"), "--cached-only"],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"llama-bench is not built: {done.stderr.strip()}"
    return Path(done.stdout.strip())


def test_llama_bench_decodes_complete_synthetic_models(small_model, tmp_path):
    from numatune.fullmodel import synthesize_complete
    deepseek = tmp_path / "deepseek2.gguf"       # MLA attention and a shared expert, smaller hidden size
    synthesize_complete(deepseek, replace(PRESETS["deepseek-v3"], hidden=1024, intermediate=256, experts=32,
                                          layers=1, dense_layers=1, dense_width=512), "Q8_0")
    for model in (small_model, deepseek):
        assert_llama_bench_decodes(model)


def assert_llama_bench_decodes(model: Path) -> None:
    done = subprocess.run([str(llama_bench()), "-m", str(model), "-p", "0", "-n", "4", "-r", "1",
                           "-t", "1", "-o", "json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    samples = PARSERS["llama-bench-json"](done.stdout, 1)
    assert len(samples) == 1 and samples[0] > 0


def test_tune_runs_llama_bench_as_the_trial_and_check_remeasures_it(tmp_path, small_model, capsys):
    binary = llama_bench()
    out = tmp_path / "r.json"
    code, data, err = tune_json(capsys, "--engine", "llama.cpp", "--engine-bin", str(binary), "--model",
                                str(small_model), "--budget", "90", "--out", str(out), "--json")
    assert code == 0, err
    assert f"trials: llama.cpp itself, {binary}" in err
    ok = [t for t in data["trials"] if t["error"] is None]
    assert ok and data["winner"], data
    for t in ok:          # llama-bench's own repetitions are the samples
        assert t["tokens_per_s"]["n"] == 3 + 2 * t["stage"] and t["tokens_per_s"]["median"] > 0
        assert t["resident_bytes"] > small_model.stat().st_size        # llama-bench holds the weights
    # the --numa mode is set on every trial: on a one-node host only numactl, the others said why not
    assert {t["config"].get("numa_mode") for t in data["trials"]} == {"numactl"}
    modes = {m["mode"]: m for m in data["numa_modes"]}
    assert modes["numactl"]["tried"] > 0 and modes["distribute"]["tried"] == modes["isolate"]["tried"] == 0
    assert "one NUMA node" in modes["isolate"]["why_not"]
    # and a trial with another mode set runs llama-bench with it (ggml ignores it on one node)
    from numatune.external import trials_for_record
    from numatune.search import stage_plan
    from numatune.sysfs import Root
    from numatune.topology import probe
    result = load_result(out)
    isolated = replace(result.winner.config, numa_mode="isolate")
    trial = trials_for_record(result.engine, probe(Root.open("/")))(
        isolated, ModelChoice.from_file(small_model), 0, stage_plan(0))
    assert trial.error is None and trial.tokens_per_s.median > 0 and trial.config.numa_mode == "isolate"
    saved = result.engine
    assert saved.command[0] == str(binary) and "-o" in saved.command and saved.parser == "llama-bench-json"
    assert dict(saved.binary.build).get("GGML_NATIVE") == "ON" and "version" in saved.binary.version
    assert main(["check", str(out), "--tolerance", "0.9", "--json"]) in (0, 1)
    verdict = json.loads(capsys.readouterr()[0])
    assert verdict["current"]["error"] is None and verdict["current"]["tokens_per_s"]["median"] > 0


@pytest.mark.parametrize("where", ["engine", "child"])
def test_a_trial_records_the_peak_resident_set_of_its_process_tree(tmp_path, small_model, capsys, where):
    """The fake engine touches 256 MiB (itself, or in a child it forks and reaps): the trial's
    memory is that peak, not 0, and not numatune's own resident set either (this process holds
    384 MiB more while it tunes: a child forked straight from it would report at least that)."""
    size = 256 << 20
    extra = ["--allocate-in-child"] if where == "child" else []
    ballast = bytearray(384 << 20)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))
    code, data, err = tune_json(capsys, "--engine", "llama.cpp", "--model", str(small_model), "--budget", "60",
                                "--out", str(tmp_path / "r.json"), "--json", "--",
                                str(fake_as(tmp_path, "llama-cli")), "--allocate", "256", *extra)
    assert code == 0, err
    ok = [t for t in data["trials"] if t["error"] is None]
    assert ok
    for t in ok:           # the interpreter itself adds some tens of MiB, never hundreds
        assert size <= t["resident_bytes"] < size + (96 << 20), t["resident_bytes"]
    assert ballast[4096] == 1


def test_auto_tunes_an_installed_llama_bench_directly_and_says_so(tmp_path, small_model, capsys, monkeypatch):
    """`auto --engine llama.cpp` with llama-bench on PATH: the trials run it (not the bundled
    engine), stderr says so, and llama.cpp's recommendation is its measured winner."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-bench").symlink_to(llama_bench())
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = main(["auto", "--engine", "llama.cpp", "--model", str(small_model), "--budget", "60",
                 "--out", str(tmp_path / "auto.json"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"trials: llama.cpp itself, {llama_bench()}" in err
    data = json.loads(out)
    result = data["result"]
    assert result["engine"]["name"] == "llama.cpp" and result["engine"]["binary"]["path"] == str(llama_bench())
    assert result["winner"] and all(t["config"]["numa_mode"] == "numactl" for t in result["trials"])
    recommended = data["recommendations"]["llama.cpp"]
    assert recommended["config"]["cpus"] == result["winner"]["config"]["cpus"]
    assert any("llama.cpp itself" in reason for reason in recommended["reasons"])
