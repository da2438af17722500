"""Trials of the engine the user really runs: its benchmark command (llama-bench for llama.cpp,
or any command given after `--`), placed and given its thread count exactly as `launch` would
(`command.build_command`: the numactl prefix or numatune's own affinity and memory policy, the
profile's thread flag, flags and environment), its throughput read from its output by the
parser the engine's profile names or by a `--metric` regular expression.

A trial whose program exits non-zero, prints no throughput, or runs past its share of the
budget becomes a failed Trial carrying the tail of its stderr; the search goes on.

A trial's memory is the peak resident set of the engine's process tree, as wait4(2) reports it
(ru_maxrss: the largest of the process and of the descendants it reaped). The engine is not
forked by numatune itself but by a bare interpreter (`python -I -S`, no imports, ~10 MiB) that
reports the ru_maxrss of the engine it reaps on a pipe: the kernel keeps, across exec, the peak
of the image a process replaced, so a program started straight from numatune would report at
least numatune's own resident set (hundreds of MiB with torch loaded), whatever it used. wait4
needs no cgroup to be created or delegated and works for any user; a cgroup's memory.peak would
also sum concurrent processes of the tree but is not available everywhere numatune runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from .config import Configuration
from .errors import NumatuneError
from .command import LaunchPlan, build_command
from .launch import apply_placement
from .profiles import BENCHMARK_PARSERS, EngineProfile
from .search import Stage
from .stats import Measurement
from .store import EngineBinary, TargetEngine, Trial
from .topology.model import Topology
from .trial import ModelChoice, _failed, _kill, _kill_session

STDERR_TAIL_LINES = 3
MIN_TRIAL_SECONDS = 5.0     # a share shorter than this could not even load a model
UNBUDGETED_SHARE_S = 600.0  # `check` re-measures without a budget: a hung engine still ends
BUILD_SWITCH = re.compile(r"(GGML_(?:NATIVE|OPENMP|BLAS|LLAMAFILE|CPU\w*|AVX\w*|AMX\w*|FMA|F16C|BMI2|SSE42|"
                          r"BACKEND_DL|CUDA|HIP|VULKAN|METAL|SYCL)):\w+=(.*)")


class NoMetric(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Parsers: text printed by an engine → tokens/s samples

def parse_llama_bench_json(out: str, threads: Optional[int] = None) -> list[float]:
    """The generation test of `llama-bench -o json`: its per-repetition `samples_ts` (else
    `avg_ts`). With `threads`, a test run with another thread count is an error: the flag did
    not reach the engine."""
    start = out.find("[")
    try:
        tests = json.loads(out[start:]) if start >= 0 else None
    except ValueError as exc:
        raise NoMetric(f"llama-bench output is not JSON ({exc})") from None
    if not isinstance(tests, list):
        raise NoMetric("llama-bench printed no JSON list of tests")
    generation = [t for t in tests if isinstance(t, dict) and t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0]
    if not generation:
        raise NoMetric("llama-bench printed no generation test (n_gen > 0, n_prompt = 0)")
    test = generation[0]
    if threads is not None and test.get("n_threads") not in (None, threads):
        raise NoMetric(f"llama-bench ran {test.get('n_threads')} threads, {threads} were asked")
    samples = test.get("samples_ts") or ([test["avg_ts"]] if "avg_ts" in test else [])
    if not samples:
        raise NoMetric("llama-bench's generation test has neither samples_ts nor avg_ts")
    return [float(s) for s in samples]


def regex_parser(pattern: str) -> Callable[[str, Optional[int]], list[float]]:
    """Every match of `pattern` is one sample: its first group (or the whole match) as a number."""
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as exc:
        raise NumatuneError(f"--metric: not a regular expression ({exc})") from None

    def parse(out: str, threads: Optional[int] = None) -> list[float]:
        samples = []
        for match in compiled.finditer(out):
            text = match.group(1) if compiled.groups else match.group(0)
            try:
                samples.append(float(text))
            except (TypeError, ValueError):
                raise NoMetric(f"the metric matched '{text}', not a number") from None
        if not samples:
            raise NoMetric(f"no line matched /{pattern}/")
        return samples
    return parse


_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
PATTERNS = {
    # llama.cpp's perf summary: "eval time = 1234.5 ms / 127 runs (9.72 ms per token, 102.88 tokens per second)";
    # the "prompt eval time" line (prefill) is not decode.
    "llama-timings": rf"(?<!prompt )\beval time\s*=.*?{_NUMBER} tokens per second",
    # ktransformers' local_chat after each answer: "eval rate:   12.3 tokens/s" (not "prompt eval rate").
    "ktransformers": rf"(?<!prompt )\beval rate:\s*{_NUMBER} tokens/s",
    # vLLM: benchmark_serving / `vllm bench serve` "Output token throughput (tok/s): N";
    # `vllm bench throughput` "Throughput: … requests/s, … total tokens/s, N output tokens/s".
    "vllm-bench": rf"(?:Output token throughput \(tok/s\):\s*{_NUMBER}|{_NUMBER} output tokens/s)",
    # SGLang bench_one_batch: "Decode.  median latency: 0.05 s, median throughput:  20.1 token/s".
    "sglang-bench": rf"Decode\.\s+median latency:.*?median throughput:\s*{_NUMBER} token/s",
}


def _first_group_parser(pattern: str):
    compiled = re.compile(pattern, re.MULTILINE)

    def parse(out: str, threads: Optional[int] = None) -> list[float]:
        samples = [float(next(g for g in m.groups() if g is not None)) for m in compiled.finditer(out)]
        if not samples:
            raise NoMetric("no throughput line in the output")
        return samples
    return parse


PARSERS = {"llama-bench-json": parse_llama_bench_json,
           **{name: _first_group_parser(pattern) for name, pattern in PATTERNS.items()}}
assert set(PARSERS) == set(BENCHMARK_PARSERS)


# ---------------------------------------------------------------------------------------------
# The binary

def resolve_program(word: str) -> Optional[Path]:
    found = shutil.which(word)
    return Path(found).resolve() if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(path: Path) -> str:
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    return " / ".join(lines[:2]) if done.returncode == 0 and lines else "unknown"


def _build(path: Path) -> tuple[tuple[str, str], ...]:
    """What is known of how the program was built: the ggml switches that change CPU decode
    (ISA, OpenMP, BLAS, back ends) in the CMake cache a build of tools/build-llama-bench.sh keeps
    beside bin/, and the shared libraries it links (libnuma, libgomp: NUMA and OpenMP support)."""
    from .elf import needed_libraries
    build: dict[str, str] = {}
    cache = path.parent.parent / "CMakeCache.txt"
    if cache.is_file():
        for line in cache.read_text(errors="replace").splitlines():
            m = BUILD_SWITCH.match(line)
            if m and m.group(2) in ("ON", "OFF"):
                build[m.group(1)] = m.group(2)
    try:
        libraries = needed_libraries(path)
    except (OSError, ValueError, NumatuneError):
        libraries = []
    build["linked"] = " ".join(libraries) or "-"
    return tuple(sorted(build.items()))


def inspect_binary(path: Path) -> EngineBinary:
    return EngineBinary(str(path), _sha256(path), _version(path), _build(path))


def binary_mismatch(saved: EngineBinary) -> Optional[str]:
    """Why the binary at the saved path is not the one that was measured, or None."""
    path = Path(saved.path)
    if not path.is_file():
        return f"{saved.path} is gone"
    now = _sha256(path)
    if now != saved.sha256:
        return (f"{saved.path} changed (sha256 {saved.sha256[:12]} measured, {now[:12]} now; "
                f"version then: {saved.version})")
    return None


# ---------------------------------------------------------------------------------------------
# The trial

@dataclass(frozen=True)
class ExternalEngine:
    """What runs as the trial: the engine's profile, the command template, how to read it."""

    profile: EngineProfile
    command: tuple[str, ...]
    parser: str                       # a name of PARSERS, or "metric"
    metric: Optional[str]
    repeats: str                      # engine | rerun
    binary: EngineBinary

    def record(self) -> TargetEngine:
        return TargetEngine(self.profile.name, self.command, None if self.metric else self.parser, self.metric,
                            self.binary)

    def parse(self, out: str, threads: int) -> list[float]:
        parse = regex_parser(self.metric) if self.metric else PARSERS[self.parser]
        return parse(out, threads)


def external_engine(profile: EngineProfile, command: Sequence[str] = (), engine_bin: Optional[Path] = None,
                    metric: Optional[str] = None) -> Optional[ExternalEngine]:
    """The external trial for `profile`: the user's command, else the profile's benchmark
    command with its program from `engine_bin` or PATH. None when the profile has no benchmark
    command and none was given, or its program is not installed (trials then run the bundled
    engine)."""
    spec = profile.benchmark
    words = tuple(command) or (spec.command if spec else ())
    if not words:
        if metric:
            raise NumatuneError(f"--metric: give the command to measure after `--` ({profile.name} has no "
                                "benchmark command of its own)")
        return None
    if engine_bin is not None and not command:
        if not (engine_bin.is_file() and os.access(engine_bin, os.X_OK)):
            raise NumatuneError(f"--engine-bin: {engine_bin} is not an executable file")
        words = (str(engine_bin.resolve()),) + words[1:]
    program = resolve_program(words[0])
    if program is None:
        if command:
            raise NumatuneError(f"command not found: {words[0]}")
        return None
    if spec is None and metric is None:
        raise NumatuneError(f"--metric: the {profile.name} profile names no throughput parser; give a "
                            "regular expression whose first group is the tokens/s")
    regex_parser(metric) if metric else None
    parser = "metric" if metric else spec.parser_for(words[0])
    # The profile's benchmark program repeats by itself when the profile says so; any other
    # program is run once per repetition.
    same_program = bool(spec and spec.command) and Path(words[0]).name == Path(spec.command[0]).name
    repeats = spec.repeats if spec and (not command or same_program) else "rerun"
    given = Path(shutil.which(words[0]) or words[0]).absolute()
    return ExternalEngine(profile, (str(given),) + tuple(words[1:]), parser, metric, repeats,
                          inspect_binary(program))


def _benchmark_profile(profile: EngineProfile, program: str) -> EngineProfile:
    """The profile as it applies to the profile's benchmark program: without the flags it does
    not take (llama-bench has no -tb). Other programs get the profile as `launch` applies it."""
    spec = profile.benchmark
    if not spec or not spec.drop_flags or not spec.command or Path(program).name != Path(spec.command[0]).name:
        return profile
    return replace(profile, flags=tuple(f for f in profile.flags if f.name not in spec.drop_flags))


def _fill(words: Sequence[str], model: ModelChoice, stage: Stage) -> list[str]:
    values = {"model": str(model.path), "tokens": str(stage.tokens), "repeats": str(stage.repeats)}
    return [re.sub(r"{(model|tokens|repeats)}", lambda m: values[m.group(1)], w) for w in words]


def _tail(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(lines[-STDERR_TAIL_LINES:])[-400:] or "(no stderr)"


# Runs argv[2:] as its child and writes the child's ru_maxrss (KiB) to the descriptor argv[1];
# exits as the child did (by the same signal when it was killed).
_REAPER = """import os, signal, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write(f"{sys.argv[2]}: {exc.strerror}\\n")
        os._exit(127)
status, usage = os.wait4(pid, 0)[1:]
os.write(fd, str(usage.ru_maxrss).encode())
os.close(fd)
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _read_peak(fd: int) -> int:
    """The reaper's report: the engine's ru_maxrss in bytes (KiB on Linux), 0 when it sent none."""
    with os.fdopen(fd, "rb") as report:
        text = report.read().decode(errors="replace").strip()
    return int(text) * 1024 if text.isdigit() else 0


@dataclass(frozen=True)
class _Finished:
    """One instance's run: what it printed, its peak resident set (bytes)."""

    out: str
    err: str
    peak: int


def _pair_samples(per_instance: Sequence[Sequence[float]]) -> list[float]:
    """The configuration's throughput from its instances' samples of one run: the sum of their
    i-th samples (repetition i of each instance ran at the same time as repetition i of the
    others). When instances report different sample counts, the repetitions beyond the shortest
    have no partner running beside them and are left out (a lone instance's rate is not the
    group's)."""
    return [sum(values) for values in zip(*per_instance)]


class ExternalTrials:
    """The `measure` of `tune`/`check` for an external engine: one placed run of its command
    (or `repeats` runs, when the engine does not repeat by itself) per trial.

    A configuration of several instances (one per node) runs its instances' commands at the same
    time, instance i placed and threaded as `launch --instance i` places it (each its node's CPUs,
    bound to its node). Its throughput is the sum of the instances' samples, repetition by
    repetition (`_pair_samples`); its memory the sum of their peaks. One instance failing, printing
    no throughput or the group running past the trial's share of the budget fails the trial,
    naming the instance, and stops the others."""

    def __init__(self, engine: ExternalEngine, topology: Topology, share_s: Optional[float] = None) -> None:
        self.engine, self.topology = engine, topology
        self.base_share_s = self.cap_s = share_s if share_s is not None else UNBUDGETED_SHARE_S

    def plan_budget(self, budget_s: float, candidates: int) -> None:
        """A trial's share of the budget: the budget over the candidates, doubled per stage
        (later stages decode twice as long), never more than half the budget, so that one hung
        engine leaves the search time to go on. Past its share a trial is stopped and failed."""
        self.base_share_s = budget_s / max(1, candidates)
        self.cap_s = budget_s / 2

    def share(self, stage_index: int) -> float:
        return max(MIN_TRIAL_SECONDS, min(self.base_share_s * 2 ** stage_index, self.cap_s))

    def plans(self, config: Configuration, model: ModelChoice, stage: Stage) -> list[LaunchPlan]:
        """The placed commands of a trial, one per instance: `launch --instance i`'s (the
        engine's benchmark command in place of its server)."""
        profile = _benchmark_profile(self.engine.profile, self.engine.command[0])
        argv = _fill(self.engine.command, model, stage)
        return [build_command(part, profile, self.topology, argv) for part in config.split(self.topology.node_of_cpu)]

    def __call__(self, config: Configuration, model: ModelChoice, stage_index: int, stage: Stage,
                 target: Optional[EngineProfile] = None) -> Trial:
        parts = config.split(self.topology.node_of_cpu)
        plans = self.plans(config, model, stage)
        names = [f"instance {i} (node {part.nodes[0]}): " if len(parts) > 1 else "" for i, part in enumerate(parts)]
        runs = 1 if self.engine.repeats == "engine" else stage.repeats
        deadline = self.share(stage_index)
        samples: list[float] = []
        peak = 0
        for _ in range(runs):
            began = time.monotonic()
            outcome = _run_group(plans, names, deadline)
            if isinstance(outcome, str):
                return _failed(config, stage_index, outcome)
            deadline -= time.monotonic() - began
            peak = max(peak, sum(done.peak for done in outcome))
            per_instance = []
            for index, (part, done) in enumerate(zip(parts, outcome)):
                try:
                    per_instance.append(self.engine.parse(
                        done.out + "\n" + done.err if self.engine.parser != "llama-bench-json" else done.out,
                        part.threads))
                except NoMetric as exc:
                    return _failed(config, stage_index, names[index] + f"{exc}: {_tail(done.err)}")
            samples += _pair_samples(per_instance)
        return Trial(config, Measurement.of(samples, "tok/s"), None, peak, stage_index)


def _start(plan):
    """The placed program under the reaper, in its own session; (process, report fd) or why not."""
    env = dict(os.environ)
    env.update(dict(plan.env))
    preexec = None if plan.uses_numactl else (lambda: apply_placement(plan.placement))
    readable, writable = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER, str(writable), *plan.argv], env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, errors="replace", preexec_fn=preexec, start_new_session=True,
                                 pass_fds=(writable,))
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(readable)
        return f"could not start {shlex.join(plan.argv[:1])}: {exc}"
    finally:
        os.close(writable)
    return child, readable


def _run_group(plans, names: Sequence[str], timeout: float):
    """Runs the plans at the same time: each instance's output and peak, or why the group failed
    (the first instance to fail, named by `names`, or the group past `timeout` seconds; the others
    are killed)."""
    started = []
    try:
        for plan, name in zip(plans, names):
            begun = _start(plan)
            if isinstance(begun, str):
                raise _GroupFailed(name + begun)
            started.append(begun)
        return _wait_group([child for child, _ in started], [fd for _, fd in started], names, timeout)
    except _GroupFailed as exc:
        return str(exc)
    finally:
        for child, _ in started:
            _kill(child)                 # Ctrl-C or a failure: every instance is in its own session


class _GroupFailed(Exception):
    pass


def _wait_group(children: list, report_fds: list[int], names: Sequence[str], timeout: float) -> list[_Finished]:
    """Waits for every child: their outputs as they end (one reader thread each, so that one
    child's full pipe never holds up another), the first non-zero exit or the deadline failing
    the group at once."""
    ended: queue.Queue = queue.Queue()
    outputs: dict[int, tuple[str, str]] = {}

    def read(index: int) -> None:
        outputs[index] = children[index].communicate()
        ended.put(index)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(children))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + max(timeout, 0.1)
    peaks = [0] * len(children)
    try:
        for _ in children:
            try:
                index = ended.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                late = [i for i in range(len(children)) if children[i].poll() is None]
                for child in children:
                    _kill_session(child)      # its reader thread reaps it
                for reader in readers:
                    reader.join()
                first = late[0] if late else 0
                raise _GroupFailed(f"{names[first]}ran past its share of the budget ({timeout:.0f} s): "
                                   f"{_tail(outputs[first][1])}") from None
            peaks[index] = _read_peak(report_fds[index])
            report_fds[index] = -1
            code = children[index].returncode
            if code != 0:
                status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                raise _GroupFailed(names[index] + f"{status}: {_tail(outputs[index][1])}")
    finally:
        for fd in report_fds:
            if fd >= 0:
                os.close(fd)
        for child in children:
            if child.poll() is None:
                _kill_session(child)      # its reader thread reaps it
        for reader in readers:
            reader.join()
    return [_Finished(outputs[i][0], outputs[i][1], peaks[i]) for i in range(len(children))]


def trials_for_record(record: TargetEngine, topology: Topology) -> ExternalTrials:
    """The trials a saved result's engine ran, to re-measure with the same binary: a different
    binary at the recorded path (rebuilt, upgraded) is refused, its results are not comparable."""
    from .profiles import find_engine_profile
    if record.binary is None:
        raise NumatuneError(f"the saved result ran {record.name}'s command but did not record its binary")
    why = binary_mismatch(record.binary)
    if why:
        raise NumatuneError(f"{record.name}: not the binary that was measured: {why}")
    profile = find_engine_profile(record.name)
    spec = profile.benchmark
    parser = record.parser or "metric"
    same_program = bool(spec and spec.command) and Path(record.command[0]).name == Path(spec.command[0]).name
    repeats = spec.repeats if spec and same_program else "rerun"
    engine = ExternalEngine(profile, record.command, parser, record.metric, repeats, record.binary)
    return ExternalTrials(engine, topology)
