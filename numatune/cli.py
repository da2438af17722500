"""The `numatune` command: parses, calls one function per command, renders with rich.

Every NumatuneError (and every usage error) ends as one line on stderr and exit status 2.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from . import render
from .errors import NumatuneError
from .policy import NAMES as POLICY_NAMES
from .policy import Policy


class NumatuneApp(typer.Typer):
    """A Typer app whose errors are one line each, never a traceback or a usage box."""

    def __call__(self, *args, **kwargs):
        sys.exit(main(kwargs.get("args")))


app = NumatuneApp(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="NUMA topology auditor and auto-tuning launcher for CPU MoE inference.")


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the CLI in-process; returns the exit status (usable from tests without a subprocess)."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="numatune", standalone_mode=False)
    except NumatuneError as exc:
        print(f"numatune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("numatune: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, not an error
            print(ctx.get_help() if ctx else "")
            return 0
        where = f" ({ctx.command_path})" if ctx else ""
        print(f"numatune: error{where}: {exc.format_message()}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _is_usage_error(exc: Exception) -> bool:
    """A click-style usage error: click's own, or the copy of click that newer typer carries."""
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2


def _emit_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


RootOption = typer.Option("/", "--root", help="Machine to read: '/', a captured tree, or a "
                          "hwloc-gather-topology tarball (.tar.bz2), read in place.")


class OutputFormat(str, Enum):
    shell = "shell"
    systemd = "systemd"
    systemd_dropin = "systemd-dropin"
    kubernetes = "kubernetes"
    slurm = "slurm"
    docker = "docker"


FormatOption = typer.Option(None, "--format", help="Write the command for where it runs: shell, systemd (a unit), "
                            "systemd-dropin, kubernetes (Pod + KubeletConfiguration), slurm (batch script), "
                            "docker (also podman). See docs/recommend.md.")


class Objective(str, Enum):
    latency = "latency"
    throughput = "throughput"


ObjectiveOption = typer.Option(Objective.latency, "--objective", help="latency: one instance, its tokens/s; "
                               "throughput: also one instance per node, their sum.")


def _probe(root: str):
    from .sysfs import Root
    from .topology import probe
    return probe(Root.open(root))


def _measure_bandwidth(topology, repeats: int, quiet: bool, **options):
    """measure_topology with a progress bar on a terminal."""
    from .bandwidth import measure_topology
    from .progress import Steps, wanted
    with Steps("bandwidth", wanted(quiet)) as steps:
        return measure_topology(topology, repeats=repeats, on_start=steps.start, on_step=steps.advance, **options)


@app.command("probe")
def probe_command(
    root: str = RootOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (schema in docs/probe-json.md)."),
    bandwidth: bool = typer.Option(False, "--bandwidth", help="Also measure memory bandwidth, node × node."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Repetitions per bandwidth measurement."),
) -> int:
    """Read the topology (nodes, CPUs, caches, memory, limits, kernel knobs); optionally measure bandwidth."""
    from .sysfs import names_live_machine
    if bandwidth and not names_live_machine(root):
        raise NumatuneError(f"--bandwidth with --root {root}: bandwidth is measured on the live machine "
                            "only; drop --bandwidth to read the captured root")
    topology = _probe(root)
    matrix = _measure_bandwidth(topology, repeats, quiet=as_json) if bandwidth else None
    if as_json:
        data = topology.to_json()
        if matrix is not None:
            data["bandwidth"] = matrix.to_json()
        _emit_json(data)
    else:
        render.topology(topology, matrix)
    return 0


class FailOn(str, Enum):
    never = "never"
    info = "info"
    warning = "warning"
    error = "error"


@app.command("audit", context_settings={"allow_interspersed_args": False})
def audit_command(
    command: Optional[List[str]] = typer.Argument(None, help="The command line you intend to run, after -- "
                                                  "(its numactl/taskset prefix and thread flags are checked)."),
    root: str = RootOption,
    engine: Optional[str] = typer.Option(None, "--engine", help="Target engine to check: a profile in "
                                         "profiles/engines (ktransformers, llama.cpp, vllm-cpu, sglang-cpu, openmp, "
                                         "numatune)."),
    engine_bin: Optional[Path] = typer.Option(None, "--engine-bin", help="The engine's binary or "
                                              "extension (default: the installed Python package)."),
    model: Optional[str] = typer.Option(None, "--model", help="A GGUF file, or a model profile "
                                        "name with quantization, e.g. deepseek-r1:Q4_K_M."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Thread count you intend to run with."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    fail_on: FailOn = typer.Option(FailOn.error, "--fail-on", help="Exit 1 when a finding of this "
                                   "severity or worse is found."),
) -> int:
    """Report what is wrong for NUMA inference on this machine, with evidence and fixes."""
    from .audit import SEVERITIES, AuditContext, run_audit, worst_severity
    from .command import parse_command
    from .engines import ENGINES, inspect_engine
    from .models import resolve_model
    from .profiles import find_engine_profile

    profile = find_engine_profile(engine) if engine else None
    topology = _probe(root)
    context = AuditContext(
        engine=inspect_engine(engine, engine_bin) if engine in ENGINES else None,
        model=resolve_model(model) if model else None,
        threads=threads,
        command=parse_command(profile, command) if command else None, profile=profile)
    findings = run_audit(topology, context)
    if as_json:
        _emit_json({"schema_version": 1, "root": topology.root,
                    "findings": [f.to_json() for f in findings]})
    else:
        render.findings(findings)
    worst = worst_severity(findings)
    failing = fail_on is not FailOn.never and worst is not None and \
        SEVERITIES.index(worst) >= SEVERITIES.index(fail_on.value)
    return 1 if failing else 0


def _cpu_list(text: str, flag: str) -> list[int]:
    from .sysfs import parse_cpulist
    try:
        cpus = parse_cpulist(text)
    except ValueError:
        raise NumatuneError(f"{flag}: '{text}' is not a CPU or node list like 0-3,8") from None
    if not cpus:
        raise NumatuneError(f"{flag}: empty list")
    return cpus


def _model_path(model: Optional[str], synthetic: Optional[str], type_name: str, topology) -> str:
    if (model is None) == (synthetic is None):
        raise NumatuneError("give exactly one of --model FILE.gguf and --synthetic PRESET")
    if model is not None:
        return model
    from .synth import model_for_machine
    return str(model_for_machine(topology, type_name, synthetic))


@app.command("bench")
def bench_command(
    model: Optional[str] = typer.Option(None, "--model", help="GGUF file with MoE layers."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Generated model preset "
                                            "(default, qwen3-30b-a3b, deepseek-v3, qwen1.5-moe-a2.7b, mixtral-8x7b, "
                                            "llama4-scout), with enough layers to read ≥ 4× the last-level caches per "
                                            "pass, cached after first use."),
    type_name: str = typer.Option("Q4_K_M", "--type", help="Weight type of a --synthetic model."),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="CPUs to run on, e.g. 0-31,64-95."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Thread count (CPUs chosen one per core)."),
    policy: str = typer.Option(Policy.FIRST_TOUCH.value, "--policy", help=", ".join(POLICY_NAMES) + "."),
    nodes: Optional[str] = typer.Option(None, "--nodes", help="Node set of the policy, e.g. 0,1."),
    tokens: int = typer.Option(64, "--tokens", min=1, help="Decoded tokens per repetition."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Repetitions (median and spread)."),
    no_bandwidth: bool = typer.Option(False, "--no-bandwidth", help="Skip the read-bandwidth reference."),
    sync_barriers: int = typer.Option(0, "--sync-barriers", min=0, help="Barriers all threads meet at per layer, "
                                      "emulating another engine's synchronisation (its profile's sync field)."),
    topology_file: Optional[Path] = typer.Option(None, "--topology", help="This machine as `probe --json` "
                                                 "wrote it, used instead of probing (tune's trials pass it)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> int:
    """Decode with the bundled engine and compare its weight traffic with the memory's read bandwidth."""
    from .bench import pick_cpus, run_bench
    from .store import load_json
    from .topology import Topology
    topology = load_json(topology_file, Topology.from_json, "a probe JSON document") if topology_file else _probe("/")
    if (cpus is None) == (threads is None):
        raise NumatuneError("give exactly one of --cpus LIST and --threads N")
    chosen = _cpu_list(cpus, "--cpus") if cpus else list(pick_cpus(topology, threads))
    node_set = _cpu_list(nodes, "--nodes") if nodes else None
    path = _model_path(model, synthetic, type_name, topology)
    result = run_bench(path, chosen, policy, node_set, topology, tokens=tokens, repeats=repeats,
                       measure_read=not no_bandwidth, sync_barriers=sync_barriers)
    if as_json:
        _emit_json(result.to_json())
    else:
        render.bench(result)
    return 0


model_app = typer.Typer(help="Generate and inspect models for the bundled engine.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("synth")
def model_synth_command(
    out: Path = typer.Option(..., "--out", help="GGUF file to write (atomically)."),
    preset_name: str = typer.Option("default", "--preset", help="default, qwen3-30b-a3b, deepseek-v3, "
                                    "qwen1.5-moe-a2.7b, mixtral-8x7b or llama4-scout."),
    type_name: str = typer.Option("Q4_K_M", "--type", help="Q4_K_M, or one type: Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS, BF16, F16, F32."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="MoE layers (default: the preset's)."),
    experts: Optional[int] = typer.Option(None, "--experts", min=1, help="Experts per layer."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    complete: bool = typer.Option(False, "--complete", help="A whole model llama.cpp decodes: embeddings, "
                                  "attention, norms, a small vocabulary and the output head around the MoE layers."),
) -> int:
    """Write a GGUF with real MoE layer shapes and random weights."""
    from .progress import Steps, wanted
    from .synth import preset, synthesize
    chosen = preset(preset_name, layers, experts)
    if complete:
        from .fullmodel import synthesize_complete
        result = synthesize_complete(out, chosen, type_name, seed)
    else:
        with Steps("synth", wanted()) as steps:
            steps.start(chosen.layers + 1)
            result = synthesize(out, chosen, type_name, seed, on_step=steps.advance)
    render.console.print(f"wrote {result.path}: {result.preset.description}; {result.type_name}, "
                         f"{result.preset.layers} layers × {result.preset.experts} experts, "
                         f"{result.expert_bytes / 1e9:.2f} GB of experts")
    return 0


def _saved_for(topology, from_file: Optional[Path], root: str):
    """A tuning result: the file given, else the one saved for this host (live machine only)."""
    from . import store
    if from_file is not None:
        return store.load_result(from_file)
    return store.saved_result(store.fingerprint(topology)) if root == "/" else None


@app.command("recommend")
def recommend_command(
    engine: str = typer.Option(..., "--engine", help="ktransformers, llama.cpp, vllm-cpu, sglang-cpu, openmp, numatune."),
    model: Optional[str] = typer.Option(None, "--model", help="GGUF file or model profile, e.g. deepseek-r1:Q4_K_M."),
    engine_bin: Optional[Path] = typer.Option(None, "--engine-bin", help="The engine's binary or extension."),
    root: str = RootOption,
    from_file: Optional[Path] = typer.Option(None, "--from", help="A saved tuning result to follow."),
    objective: Objective = ObjectiveOption,
    output_format: Optional[OutputFormat] = FormatOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> int:
    """The command to run for an engine, with the reason for each choice and the warnings that apply."""
    from .engines import ENGINES, inspect_engine
    from .models import resolve_model
    from .recommend import recommend
    if output_format is not None and as_json:
        raise NumatuneError("give at most one of --format and --json")
    topology = _probe(root)
    install = inspect_engine(engine, engine_bin) if engine in ENGINES and (engine_bin or root == "/") else None
    footprint = resolve_model(model) if model else None
    result = recommend(topology, engine, footprint, _saved_for(topology, from_file, root), install,
                       objective=objective.value)
    if output_format is not None:
        from .deploy import render as render_deployment
        sys.stdout.write(render_deployment(result, topology, output_format.value,
                                           footprint.weight_bytes if footprint else None))
        return 0
    if as_json:
        _emit_json({"schema_version": 1, **result.to_json()})      # numatune/schemas/recommend-v1.schema.json
    else:
        render.recommendation(result)
    return 0


@app.command("launch", context_settings={"allow_interspersed_args": False})
def launch_command(
    command: List[str] = typer.Argument(..., help="The command to run, after --."),
    engine: str = typer.Option("openmp", "--engine", help="Engine profile that says how to pass threads."),
    model: Optional[str] = typer.Option(None, "--model", help="Model (for the memory fit)."),
    from_file: Optional[Path] = typer.Option(None, "--from", help="A saved tuning result to follow."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact command and environment only."),
    instance: Optional[int] = typer.Option(None, "--instance", min=0, help="With one instance per node: which one to run."),
    root: str = RootOption,
) -> int:
    """Run a command placed as the recommendation (or a saved result) says; exit status passed through."""
    from .launch import print_plan, run
    from .models import resolve_model
    from .recommend import recommend
    topology = _probe(root)
    chosen = recommend(topology, engine, resolve_model(model) if model else None,
                       _saved_for(topology, from_file, root), None, tuple(command))
    plans = chosen.plans
    if len(plans) > 1 and instance is None:
        raise NumatuneError(f"--instance: the configuration runs {len(plans)} instances, one per node; "
                            f"start each with --instance 0 … {len(plans) - 1}")
    if instance is not None and instance >= len(plans):
        raise NumatuneError(f"--instance: {instance} asked, the configuration has {len(plans)} instance(s)")
    plan = plans[instance or 0]
    for warning in plan.warnings:
        print(f"numatune: {warning}", file=sys.stderr)
    if dry_run:
        print_plan(plan)
        return 0
    return run(plan)


def _model_choice(topology, model: Optional[str], synthetic: Optional[str], type_name: str, complete: bool = False):
    """The user's file; else a synthetic preset: only the MoE layers for the bundled engine, a
    complete model (fullmodel.py) when the trials run the target engine itself."""
    from .trial import ModelChoice
    if model is not None and synthetic is not None:
        raise NumatuneError("give at most one of --model FILE.gguf and --synthetic PRESET")
    if model is not None:
        return ModelChoice.from_file(model)
    if complete:
        return ModelChoice.complete(synthetic or "default", type_name)
    return ModelChoice.synthetic(topology, synthetic or "default", type_name)


def _runs_engine(engine: Optional[str], engine_bin: Optional[Path], bundled: bool = False) -> bool:
    """Whether trials will run the engine's own benchmark program (so the model must be complete)."""
    from .external import resolve_program
    from .profiles import find_engine_profile
    spec = find_engine_profile(engine).benchmark if engine and not bundled else None
    return bool(spec and spec.command and (engine_bin is not None or resolve_program(spec.command[0])))


def _trials_for(topology, engine: Optional[str], engine_bin: Optional[Path], command: tuple,
                metric: Optional[str], bundled: bool, cold_cache: bool):
    """(measure, what the result records, one line saying what the trials run): the engine
    itself when it can be run (its benchmark found, or the user's command), else the bundled
    engine placed as the target is placed."""
    from functools import partial

    from .profiles import find_engine_profile
    from .store import TargetEngine
    from .trial import run_trial
    bundled_measure = partial(run_trial, cold_cache=cold_cache, topology=topology)
    if engine is None and not command:
        return bundled_measure, None, "trials: the bundled engine"
    target = find_engine_profile(engine or "openmp")
    if bundled and (command or metric):
        raise NumatuneError("--bundled: the bundled engine runs no command and reads no --metric")
    if not bundled:
        from .external import ExternalTrials, external_engine
        found = external_engine(target, command, engine_bin, metric)
        if found is not None:
            return (ExternalTrials(found, topology), found.record(),
                    f"trials: {target.name} itself, {found.binary.path} ({found.binary.version})")
    spec = target.benchmark
    why = ("--bundled" if bundled else f"{spec.command[0]} not found on PATH; --engine-bin FILE to tune it directly"
           if spec and spec.command else f"give {target.name}'s benchmark command after -- to tune it directly")
    return bundled_measure, TargetEngine(target.name, sync_barriers=target.sync_barriers), \
        f"trials: the bundled engine, placed as {target.name} is placed ({why})"


def _run_tune(topology, model, budget: float, engine: Optional[str], engine_bin: Optional[Path],
              out: Optional[Path], resume: bool, quiet: bool, objective: "Objective" = Objective.latency,
              cold_cache: bool = False, command: tuple = (), metric: Optional[str] = None, bundled: bool = False):
    from .engines import ENGINES, inspect_engine
    from .profiles import find_engine_profile
    from .tune import TuneInterrupted, tune
    target = find_engine_profile(engine or "openmp") if engine or command else None
    numa_build = inspect_engine(engine, engine_bin).numa_aware if engine in ENGINES else None
    measure, record, what = _trials_for(topology, engine, engine_bin, tuple(command), metric, bundled, cold_cache)
    if engine or command:       # which engine the trials run is worth a line only when one was named
        print(f"numatune: {what}", file=sys.stderr)
    try:
        if quiet:
            return tune(topology, model, budget, target, numa_build, out, resume, objective=objective.value,
                        measure=measure, engine=record)
        with render.TuneProgress(budget) as progress:
            return tune(topology, model, budget, target, numa_build, out, resume,
                        on_start=progress.start, on_trial=progress.trial, objective=objective.value,
                        measure=measure, engine=record)
    except TuneInterrupted as stop:
        from .errors import Interrupted
        if not stop.result.trials:
            raise Interrupted("interrupted before the first trial finished; nothing saved") from None
        raise Interrupted(f"interrupted: {len(stop.result.trials)} trial(s) kept in {stop.path} "
                          "(--resume continues)") from None


ReportOption = typer.Option(None, "--report", help="Also write one self-contained HTML page: the machine, "
                            "bandwidth (with --bandwidth), the sweep plotted, the findings and the commands.")
PlotOption = typer.Option(None, "--plot", help="Also write the sweep plot: FILE.svg, or FILE.png (drawn by "
                          "rsvg-convert, Debian package librsvg2-bin).")
ReportBandwidthOption = typer.Option(False, "--bandwidth", help="With --report: measure the bandwidth matrix "
                                     "(node × node) first and show it as heat maps.")


def _check_outputs(report: Optional[Path], plot: Optional[Path], bandwidth: bool) -> None:
    """Bad output paths are refused before any measuring starts."""
    from .plot import check_plot_path
    from .report import check_report_path
    if report is not None:
        check_report_path(report)
    if plot is not None:
        check_plot_path(plot)
    if bandwidth and report is None:
        raise NumatuneError("--bandwidth: only with --report (the heat maps are drawn in the report)")


def _write_outputs(report: Optional[Path], plot: Optional[Path], contents, quiet: bool) -> None:
    from .plot import write_plot
    from .report import sweep_plot, write_report
    if report is not None:
        write_report(report, contents)
    if plot is not None:
        write_plot(plot, sweep_plot(contents.result))
    if not quiet:
        for path in (report, plot):
            if path is not None:
                render.console.print(f"wrote {path}")


BudgetOption = typer.Option(45.0, "--budget", min=1.0, help="Seconds the search may take (trials stop starting after it).")
SyntheticOption = typer.Option(None, "--synthetic", help="Generated model preset (default: 'default', sized "
                               "to this machine's caches).")


@app.command("tune", context_settings={"allow_interspersed_args": False})
def tune_command(
    command: Optional[List[str]] = typer.Argument(None, help="The engine's own benchmark command, after --: "
                                                  "each trial runs it placed, with the profile's thread flag."),
    model: Optional[str] = typer.Option(None, "--model", help="GGUF file to measure (default: a synthetic model)."),
    synthetic: Optional[str] = SyntheticOption,
    type_name: str = typer.Option("Q4_K_M", "--type", help="Weight type of the synthetic model."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Target engine: only what it can do is searched."),
    engine_bin: Optional[Path] = typer.Option(None, "--engine-bin", help="The target engine's binary or extension."),
    budget: float = BudgetOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Result file (default: the data dir, keyed by host)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a saved, interrupted search."),
    objective: Objective = ObjectiveOption,
    cold_cache: bool = typer.Option(False, "--cold-cache", help="Drop the model file's cached pages before "
                                    "each trial (posix_fadvise), so every trial loads from the same state."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Regular expression whose first group is the "
                                         "tokens/s in the command's output (instead of the profile's parser)."),
    bundled: bool = typer.Option(False, "--bundled", help="Run the bundled engine even when the target engine "
                                 "is installed."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (the saved result)."),
    report: Optional[Path] = ReportOption,
    plot: Optional[Path] = PlotOption,
    bandwidth: bool = ReportBandwidthOption,
) -> int:
    """Search thread counts and memory placements, running the target engine itself when it is
    installed (llama-bench for llama.cpp, or the command after --), else the bundled engine."""
    _check_outputs(report, plot, bandwidth)
    topology = _probe("/")
    if command and model is None:
        raise NumatuneError("--model: give the model file the command runs (for the memory fit and the result)")
    matrix = _measure_bandwidth(topology, 3, as_json, curves=False).matrix if bandwidth else None
    complete = not command and _runs_engine(engine, engine_bin, bundled)
    run = _run_tune(topology, _model_choice(topology, model, synthetic, type_name, complete), budget, engine,
                    engine_bin, out, resume, quiet=as_json, objective=objective, cold_cache=cold_cache,
                    command=tuple(command or ()), metric=metric, bundled=bundled)
    if as_json:
        _emit_json(run.result.to_json())
    else:
        render.tune_result(run)
    if report or plot:
        from .audit import AuditContext, run_audit
        from .recommend import recommend_all
        from .report import ReportInput
        _write_outputs(report, plot, ReportInput(
            run.result, topology, matrix, tuple(run_audit(topology, AuditContext())),
            tuple(recommend_all(topology, None, run.result, objective.value).values()), str(run.path)), as_json)
    return 0 if run.result.winner else 1


@app.command("auto")
def auto_command(
    model: Optional[str] = typer.Option(None, "--model", help="GGUF file to measure (default: a synthetic model "
                                        "sized to this machine)."),
    budget: float = BudgetOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Result file (default: the data dir, keyed by host)."),
    objective: Objective = ObjectiveOption,
    output_format: Optional[OutputFormat] = FormatOption,
    engine: Optional[str] = typer.Option(None, "--engine", help="An installed engine to tune directly when it "
                                         "can be run (llama.cpp: llama-bench on PATH or --engine-bin); otherwise "
                                         "the bundled engine, placed as this engine is placed."),
    engine_bin: Optional[Path] = typer.Option(None, "--engine-bin", help="The engine's binary (e.g. llama-bench)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    report: Optional[Path] = ReportOption,
    plot: Optional[Path] = PlotOption,
    bandwidth: bool = ReportBandwidthOption,
) -> int:
    """Probe, audit, tune and recommend a command for every target engine, in one go."""
    from .audit import AuditContext, run_audit
    from .recommend import recommend_all
    from .report import ReportInput
    if output_format is not None and as_json:
        raise NumatuneError("give at most one of --format and --json")
    _check_outputs(report, plot, bandwidth)
    topology = _probe("/")
    findings = run_audit(topology, AuditContext())
    matrix = _measure_bandwidth(topology, 3, as_json, curves=False).matrix if bandwidth else None
    if not as_json:
        render.topology_summary(topology)
        render.findings(findings)
    run = _run_tune(topology, _model_choice(topology, model, None, "Q4_K_M", complete=_runs_engine(engine, engine_bin)),
                    budget, engine, engine_bin, out, False, quiet=as_json, objective=objective)
    recommendations = recommend_all(topology, None, run.result, objective.value)
    if as_json:
        _emit_json({"schema_version": 1, "findings": [f.to_json() for f in findings],
                    "result": run.result.to_json(), "saved_to": str(run.path),
                    "recommendations": {name: r.to_json() for name, r in recommendations.items()}})
    else:
        render.tune_result(run)
        if output_format is not None:
            from .deploy import render as render_deployment
            for r in recommendations.values():
                render.console.print(f"[bold]{r.engine}[/] as {output_format.value}:")
                sys.stdout.flush()
                sys.stdout.write(render_deployment(r, topology, output_format.value) + "\n")
        else:
            render.commands_table(recommendations)
    if report or plot:
        _write_outputs(report, plot, ReportInput(run.result, topology, matrix, tuple(findings),
                                                 tuple(recommendations.values()), str(run.path)), as_json)
    return 0 if run.result.winner else 1


@app.command("report")
def report_command(
    result: Path = typer.Argument(..., help="A result saved by `numatune tune`/`auto`."),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML report to write."),
    plot: Optional[Path] = PlotOption,
    bandwidth: Optional[Path] = typer.Option(None, "--bandwidth", help="Bandwidth to show: the output of "
                                             "`numatune probe --bandwidth --json` on the same machine."),
    root: str = RootOption,
) -> int:
    """Render a saved tuning result as a self-contained HTML page (and/or its sweep plot)."""
    from .report import report_for_saved
    if out is None and plot is None:
        raise NumatuneError("give --out FILE.html, --plot FILE.svg|png or both")
    _check_outputs(out, plot, False)
    contents = report_for_saved(result, bandwidth, _probe(root))
    _write_outputs(out, plot, contents, quiet=False)
    return 0


@app.command("check")
def check_command(
    baseline: Path = typer.Argument(..., help="A result saved by `numatune tune`/`auto` (--out)."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", min=0.0, max=0.9, help="Slowdown allowed, as a "
                                              "fraction (default: 3 × the baseline's relative spread, at least 0.05)."),
    allow_other_host: bool = typer.Option(False, "--allow-other-host", help="Compare even if the host differs."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write the verdict as JUnit XML (a regression "
                                         "is a failed test), for CI systems."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> int:
    """Re-measure a saved winner: exit 1 on a regression beyond the tolerance, 2 on another host or bad input."""
    import time

    from .tune import check
    started = time.monotonic()
    outcome = check(_probe("/"), baseline, tolerance, allow_other_host)
    if junit is not None:
        from .junit import write_junit
        try:
            write_junit(junit, outcome, baseline, time.monotonic() - started)
        except OSError as exc:
            raise NumatuneError(f"--junit: cannot write {junit} ({exc.strerror})") from None
    if as_json:
        _emit_json(outcome.to_json())
    else:
        render.check_outcome(outcome, baseline)
    print(f"numatune: {outcome.reason()}", file=sys.stderr)
    return 1 if outcome.regressed else 0


@app.command("plan")
def plan_cli_command(
    machine: Optional[str] = typer.Option(None, "--machine", help="A machine profile: YAML file or name in "
                                          "profiles/machines/ (default: this machine, with --bandwidth)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model profile with quantization, e.g. deepseek-r1:Q4_K_M, "
                                        "or a GGUF file (default without --machine: the model this host was tuned on)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Target engine profile: only what it can do "
                                         "is ranked (ktransformers, llama.cpp, numatune, ...)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    top: int = typer.Option(10, "--top", min=1, help="How many configurations to show."),
    bandwidth: bool = typer.Option(False, "--bandwidth", help="Without --machine: measure this machine's "
                                   "bandwidth to plan from."),
    root: str = RootOption,
    objective: Objective = ObjectiveOption,
) -> int:
    """Predict decode tok/s per configuration (roofline) and rank them; predicted vs measured where known."""
    from .plan import plan_for
    from .profiles import find_engine_profile
    target = find_engine_profile(engine) if engine else None
    result = plan_for(machine, model, target, bandwidth=bandwidth, root=root, objective=objective.value)
    if as_json:
        _emit_json(result.to_json(top))
    else:
        render.plan(result, top, target)
    return 0


@app.command("verify", context_settings={"allow_interspersed_args": False})
def verify_cli_command(
    command: Optional[List[str]] = typer.Argument(None, help="A command to start and inspect, after --."),
    pid: Optional[int] = typer.Option(None, "--pid", min=1, help="A running process to inspect instead."),
    expect: Optional[str] = typer.Option(None, "--expect", help="Intended memory placement: "
                                         + ", ".join(POLICY_NAMES) + "."),
    nodes: Optional[str] = typer.Option(None, "--nodes", help="Nodes of that placement, e.g. 0,1 (default: "
                                        "every memory node)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="The engine: its build implies the placement "
                                         "(ktransformers' NUMA build: a copy per node) and how it counts threads."),
    engine_bin: Optional[Path] = typer.Option(None, "--engine-bin", help="The engine's binary or extension."),
    model: Optional[str] = typer.Option(None, "--model", help="GGUF file or model profile: how big one copy is."),
    after: float = typer.Option(30.0, "--after", help="With a command: seconds to let it load before inspecting."),
    keep: bool = typer.Option(False, "--keep", help="With a command: leave it running afterwards (default: stop it)."),
    sample: float = typer.Option(1.0, "--sample", help="Seconds between two reads of the threads' CPU time "
                                 "(busy threads); 0 reads once."),
    root: str = RootOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (docs/verify.md)."),
) -> int:
    """Check a running engine's memory (per node, /proc/PID/numa_maps) and threads against the intended placement."""
    from .verify import verify_command
    return verify_command(pid, tuple(command or ()), expect, nodes, engine, engine_bin, model, after, keep,
                          sample, root, as_json)


@app.command("pagecache")
def pagecache_cli_command(
    path: Path = typer.Argument(..., help="A file, e.g. a GGUF model that engines memory-map."),
    drop: bool = typer.Option(False, "--drop", help="Then evict the file's pages from the page cache "
                              "(posix_fadvise DONTNEED; pages another process maps stay)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> int:
    """On which NUMA nodes a file's pages sit in the page cache (mincore + move_pages); optionally drop them."""
    from .pagecache import pagecache_command
    return pagecache_command(str(path), drop, as_json)


if __name__ == "__main__":
    app()
