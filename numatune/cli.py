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

from . import render, workflow
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


@app.command("probe")
def probe_command(
    root: str = RootOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (schema in docs/probe-json.md)."),
    bandwidth: bool = typer.Option(False, "--bandwidth", help="Also measure memory bandwidth, node × node."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Repetitions per bandwidth measurement."),
) -> int:
    """Read the topology (nodes, CPUs, caches, memory, limits, kernel knobs); optionally measure bandwidth."""
    topology, matrix = workflow.probe_with_bandwidth(root, bandwidth, repeats, quiet=as_json)
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
    topology, findings = workflow.audit(root, engine, engine_bin, model, threads, command)
    if as_json:
        _emit_json({"schema_version": 1, "root": topology.root,
                    "findings": [f.to_json() for f in findings]})
    else:
        render.findings(findings)
    return 1 if workflow.fails(findings, fail_on.value) else 0


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
    result = workflow.bench(model, synthetic, type_name, cpus, threads, policy, nodes, tokens, repeats,
                            measure_read=not no_bandwidth, topology_file=topology_file,
                            sync_barriers=sync_barriers)
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
    type_name: str = typer.Option("Q4_K_M", "--type", help="Q4_K_M, or one type: Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS, MXFP4, BF16, F16, F32, or IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S (random valid blocks: nothing here quantizes to these)."),
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
    if output_format is not None and as_json:
        raise NumatuneError("give at most one of --format and --json")
    topology, result, footprint = workflow.recommend_for(root, engine, model, engine_bin, from_file, objective.value)
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
    plan = workflow.launch_plan(root, engine, model, from_file, command, instance)
    for warning in plan.warnings:
        print(f"numatune: {warning}", file=sys.stderr)
    if dry_run:
        print_plan(plan)
        return 0
    return run(plan)


ReportOption = typer.Option(None, "--report", help="Also write one self-contained HTML page: the machine, "
                            "bandwidth (with --bandwidth), the sweep plotted, the findings and the commands.")
PlotOption = typer.Option(None, "--plot", help="Also write the sweep plot: FILE.svg, or FILE.png (drawn by "
                          "rsvg-convert, Debian package librsvg2-bin).")
ReportBandwidthOption = typer.Option(False, "--bandwidth", help="With --report: measure the bandwidth matrix "
                                     "(node × node) first and show it as heat maps.")


def _write_outputs(report: Optional[Path], plot: Optional[Path], contents, quiet: bool) -> None:
    for path in workflow.write_outputs(report, plot, contents):
        if not quiet:
            render.console.print(f"wrote {path}")


def _say(line: str) -> None:
    print(f"numatune: {line}", file=sys.stderr)


def _run_tune(topology, model, budget: float, engine: Optional[str], engine_bin: Optional[Path],
              quiet: bool, objective: Objective, **options):
    """workflow.run_tune with its line and, on a terminal, its progress display."""
    return workflow.run_tune(topology, model, budget, engine, engine_bin, objective=objective.value, say=_say,
                             progress=None if quiet else render.TuneProgress(budget), **options)


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
    workflow.check_outputs(report, plot, bandwidth)
    topology = workflow.probe("/")
    if command and model is None:
        raise NumatuneError("--model: give the model file the command runs (for the memory fit and the result)")
    matrix = workflow.measure_bandwidth(topology, 3, as_json, curves=False).matrix if bandwidth else None
    complete = not command and workflow.runs_engine(engine, engine_bin, bundled)
    run = _run_tune(topology, workflow.model_choice(topology, model, synthetic, type_name, complete), budget,
                    engine, engine_bin, quiet=as_json, objective=objective, out=out, resume=resume,
                    cold_cache=cold_cache, command=tuple(command or ()), metric=metric, bundled=bundled)
    if as_json:
        _emit_json(run.result.to_json())
    else:
        render.tune_result(run)
    if report or plot:
        _write_outputs(report, plot, workflow.tune_report(run, topology, matrix, objective.value), as_json)
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
    if output_format is not None and as_json:
        raise NumatuneError("give at most one of --format and --json")
    workflow.check_outputs(report, plot, bandwidth)
    topology, findings, matrix = workflow.auto_findings(bandwidth, quiet=as_json)
    if not as_json:
        render.topology_summary(topology)
        render.findings(findings)
    model_choice = workflow.model_choice(topology, model, None, "Q4_K_M",
                                         complete=workflow.runs_engine(engine, engine_bin))
    run = _run_tune(topology, model_choice, budget, engine, engine_bin, quiet=as_json, objective=objective,
                    out=out, resume=False)
    done = workflow.auto_recommend(topology, findings, matrix, run, objective.value)
    if as_json:
        _emit_json(done.to_json())
    else:
        render.tune_result(run)
        if output_format is not None:
            from .deploy import render as render_deployment
            for r in done.recommendations.values():
                render.console.print(f"[bold]{r.engine}[/] as {output_format.value}:")
                sys.stdout.flush()
                sys.stdout.write(render_deployment(r, topology, output_format.value) + "\n")
        else:
            render.commands_table(done.recommendations)
    if report or plot:
        _write_outputs(report, plot, done.report_input(), as_json)
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
    workflow.check_outputs(out, plot, False)
    contents = report_for_saved(result, bandwidth, workflow.probe(root))
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
    outcome = workflow.check_baseline(baseline, tolerance, allow_other_host, junit)
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
