"""What the commands do, between parsing their options (cli.py) and rendering their results
(render.py): probe the root, resolve the model and the engine, pick the trials, run the search,
check the outputs, assemble the results. Nothing here prints a result; the few lines said while
work goes on (which engine the trials run, progress) go through hooks the caller passes.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import NumatuneError


def probe(root: str):
    from .sysfs import Root
    from .topology import probe as probe_root
    return probe_root(Root.open(root))


def measure_bandwidth(topology, repeats: int, quiet: bool, **options):
    """measure_topology with a progress bar on a terminal."""
    from .bandwidth import measure_topology
    from .progress import Steps, wanted
    with Steps("bandwidth", wanted(quiet)) as steps:
        return measure_topology(topology, repeats=repeats, on_start=steps.start, on_step=steps.advance, **options)


def probe_with_bandwidth(root: str, bandwidth: bool, repeats: int, quiet: bool):
    """`probe`: the topology, and its bandwidth matrix when asked (live machine only)."""
    from .sysfs import names_live_machine
    if bandwidth and not names_live_machine(root):
        raise NumatuneError(f"--bandwidth with --root {root}: bandwidth is measured on the live machine "
                            "only; drop --bandwidth to read the captured root")
    topology = probe(root)
    return topology, measure_bandwidth(topology, repeats, quiet=quiet) if bandwidth else None


# ---------------------------------------------------------------------------------------------
# audit, bench, recommend, launch


def audit(root: str, engine: Optional[str], engine_bin: Optional[Path], model: Optional[str],
          threads: Optional[int], command: Optional[Sequence[str]]):
    """(topology, findings) of `audit`: the root's topology with what was given about the run."""
    from .audit import AuditContext, run_audit
    from .command import parse_command
    from .engines import ENGINES, inspect_engine
    from .models import resolve_model
    from .profiles import find_engine_profile
    profile = find_engine_profile(engine) if engine else None
    topology = probe(root)
    context = AuditContext(
        engine=inspect_engine(engine, engine_bin) if engine in ENGINES else None,
        model=resolve_model(model) if model else None,
        threads=threads,
        command=parse_command(profile, command) if command else None, profile=profile)
    return topology, run_audit(topology, context)


def fails(findings, fail_on: str) -> bool:
    """Whether a finding of severity `fail_on` ("never", "info", "warning", "error") or worse is there."""
    from .audit import SEVERITIES, worst_severity
    worst = worst_severity(findings)
    return fail_on != "never" and worst is not None and SEVERITIES.index(worst) >= SEVERITIES.index(fail_on)


def cpu_list(text: str, flag: str) -> list[int]:
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


def bench(model: Optional[str], synthetic: Optional[str], type_name: str, cpus: Optional[str],
          threads: Optional[int], policy: str, nodes: Optional[str], tokens: int, repeats: int,
          measure_read: bool, topology_file: Optional[Path], sync_barriers: int = 0):
    """`bench`: the bundled engine decoding on the CPUs given (or `threads` chosen one per core)."""
    from .bench import pick_cpus, run_bench
    from .store import load_json
    from .topology import Topology
    topology = load_json(topology_file, Topology.from_json, "a probe JSON document") if topology_file else probe("/")
    if (cpus is None) == (threads is None):
        raise NumatuneError("give exactly one of --cpus LIST and --threads N")
    chosen = cpu_list(cpus, "--cpus") if cpus else list(pick_cpus(topology, threads))
    node_set = cpu_list(nodes, "--nodes") if nodes else None
    path = _model_path(model, synthetic, type_name, topology)
    return run_bench(path, chosen, policy, node_set, topology, tokens=tokens, repeats=repeats,
                     measure_read=measure_read, sync_barriers=sync_barriers)


def saved_for(topology, from_file: Optional[Path], root: str):
    """A tuning result: the file given, else the one saved for this host (live machine only)."""
    from . import store
    if from_file is not None:
        return store.load_result(from_file)
    return store.saved_result(store.fingerprint(topology)) if root == "/" else None


def recommend_for(root: str, engine: str, model: Optional[str], engine_bin: Optional[Path],
                  from_file: Optional[Path], objective: str):
    """(topology, recommendation, model footprint or None) of `recommend`."""
    from .engines import ENGINES, inspect_engine
    from .models import resolve_model
    from .recommend import recommend
    topology = probe(root)
    install = inspect_engine(engine, engine_bin) if engine in ENGINES and (engine_bin or root == "/") else None
    footprint = resolve_model(model) if model else None
    result = recommend(topology, engine, footprint, saved_for(topology, from_file, root), install,
                       objective=objective)
    return topology, result, footprint


def launch_plan(root: str, engine: str, model: Optional[str], from_file: Optional[Path],
                command: Sequence[str], instance: Optional[int]):
    """The built command `launch` runs: the recommendation's, for one instance when it runs several."""
    from .models import resolve_model
    from .recommend import recommend
    topology = probe(root)
    chosen = recommend(topology, engine, resolve_model(model) if model else None,
                       saved_for(topology, from_file, root), None, tuple(command))
    plans = chosen.plans
    if len(plans) > 1 and instance is None:
        raise NumatuneError(f"--instance: the configuration runs {len(plans)} instances, one per node; "
                            f"start each with --instance 0 … {len(plans) - 1}")
    if instance is not None and instance >= len(plans):
        raise NumatuneError(f"--instance: {instance} asked, the configuration has {len(plans)} instance(s)")
    return plans[instance or 0]


# ---------------------------------------------------------------------------------------------
# tune and auto


def model_choice(topology, model: Optional[str], synthetic: Optional[str], type_name: str, complete: bool = False):
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


def runs_engine(engine: Optional[str], engine_bin: Optional[Path], bundled: bool = False) -> bool:
    """Whether trials will run the engine's own benchmark program (so the model must be complete)."""
    from .external import resolve_program
    from .profiles import find_engine_profile
    spec = find_engine_profile(engine).benchmark if engine and not bundled else None
    return bool(spec and spec.command and (engine_bin is not None or resolve_program(spec.command[0])))


def trials_for(topology, engine: Optional[str], engine_bin: Optional[Path], command: tuple,
               metric: Optional[str], bundled: bool, cold_cache: bool, arch: Optional[str] = None):
    """(measure, what the result records, one line saying what the trials run): the engine
    itself when it can be run (its benchmark found, or the user's command), else the bundled
    engine placed as the target is placed, meeting at the target's barriers for a model of
    architecture `arch`."""
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
    return bundled_measure, TargetEngine(target.name, sync_barriers=target.for_arch(arch).sync_barriers), \
        f"trials: the bundled engine, placed as {target.name} is placed ({why})"


def _architecture(path: Path) -> Optional[str]:
    """The model's `general.architecture`; None for a file that is not GGUF (an external engine's
    own format): its trials say what is wrong with it, not this."""
    from .errors import ModelError
    from .gguf_moe import model_architecture
    try:
        return model_architecture(path)
    except ModelError:
        return None


def run_tune(topology, model, budget: float, engine: Optional[str], engine_bin: Optional[Path],
             out: Optional[Path], resume: bool, objective: str = "latency", cold_cache: bool = False,
             command: tuple = (), metric: Optional[str] = None, bundled: bool = False,
             say: Callable[[str], None] = lambda line: None, progress=None):
    """The search of `tune` and `auto`, saved. `say` hears which engine the trials run (when one
    was named); `progress`, a context manager with start/trial hooks, shows the search going on."""
    from .engines import ENGINES, inspect_engine
    from .profiles import find_engine_profile
    from .tune import TuneInterrupted, tune
    arch = _architecture(model.path)
    target = find_engine_profile(engine or "openmp").for_arch(arch) if engine or command else None
    numa_build = inspect_engine(engine, engine_bin).numa_aware if engine in ENGINES else None
    measure, record, what = trials_for(topology, engine, engine_bin, tuple(command), metric, bundled, cold_cache, arch)
    if engine or command:       # which engine the trials run is worth a line only when one was named
        say(what)
    hooks = {"on_start": progress.start, "on_trial": progress.trial} if progress is not None else {}
    try:
        with progress if progress is not None else nullcontext():
            return tune(topology, model, budget, target, numa_build, out, resume, objective=objective,
                        measure=measure, engine=record, **hooks)
    except TuneInterrupted as stop:
        from .errors import Interrupted
        if not stop.result.trials:
            raise Interrupted("interrupted before the first trial finished; nothing saved") from None
        raise Interrupted(f"interrupted: {len(stop.result.trials)} trial(s) kept in {stop.path} "
                          "(--resume continues)") from None


def check_outputs(report: Optional[Path], plot: Optional[Path], bandwidth: bool) -> None:
    """Bad output paths are refused before any measuring starts."""
    from .plot import check_plot_path
    from .report import check_report_path
    if report is not None:
        check_report_path(report)
    if plot is not None:
        check_plot_path(plot)
    if bandwidth and report is None:
        raise NumatuneError("--bandwidth: only with --report (the heat maps are drawn in the report)")


def write_outputs(report: Optional[Path], plot: Optional[Path], contents) -> tuple[Path, ...]:
    """Writes the HTML report and/or the sweep plot; the paths written."""
    from .plot import write_plot
    from .report import sweep_plot, write_report
    if report is not None:
        write_report(report, contents)
    if plot is not None:
        write_plot(plot, sweep_plot(contents.result))
    return tuple(path for path in (report, plot) if path is not None)


def tune_report(run, topology, matrix, objective: str):
    """What `tune --report/--plot` shows: the run, the machine's findings and the commands."""
    from .audit import AuditContext, run_audit
    from .recommend import recommend_all
    from .report import ReportInput
    return ReportInput(run.result, topology, matrix, tuple(run_audit(topology, AuditContext())),
                       tuple(recommend_all(topology, None, run.result, objective).values()), str(run.path))


@dataclass(frozen=True)
class AutoRun:
    """`auto`'s outcome: the findings, the saved search, a recommendation per engine."""

    topology: object
    findings: tuple
    matrix: object                  # the bandwidth matrix, when measured for the report
    run: object                     # tune.TuneRun
    recommendations: dict

    def to_json(self) -> dict:
        return {"schema_version": 1, "findings": [f.to_json() for f in self.findings],
                "result": self.run.result.to_json(), "saved_to": str(self.run.path),
                "recommendations": {name: r.to_json() for name, r in self.recommendations.items()}}

    def report_input(self):
        from .report import ReportInput
        return ReportInput(self.run.result, self.topology, self.matrix, self.findings,
                           tuple(self.recommendations.values()), str(self.run.path))


def auto_findings(bandwidth: bool, quiet: bool):
    """`auto`'s first half: this machine probed and audited (and its bandwidth measured for a report)."""
    from .audit import AuditContext, run_audit
    topology = probe("/")
    findings = tuple(run_audit(topology, AuditContext()))
    matrix = measure_bandwidth(topology, 3, quiet, curves=False).matrix if bandwidth else None
    return topology, findings, matrix


def auto_recommend(topology, findings, matrix, run, objective: str) -> AutoRun:
    """`auto`'s second half: a command for every engine profile from the search just saved."""
    from .recommend import recommend_all
    return AutoRun(topology, findings, matrix, run, recommend_all(topology, None, run.result, objective))


# ---------------------------------------------------------------------------------------------
# check


def check_baseline(baseline: Path, tolerance: Optional[float], allow_other_host: bool, junit: Optional[Path]):
    """`check`: the saved winner re-measured on this machine; the verdict also as JUnit XML when asked."""
    from .tune import check
    started = time.monotonic()
    outcome = check(probe("/"), baseline, tolerance, allow_other_host)
    if junit is not None:
        from .junit import write_junit
        try:
            write_junit(junit, outcome, baseline, time.monotonic() - started)
        except OSError as exc:
            raise NumatuneError(f"--junit: cannot write {junit} ({exc.strerror})") from None
    return outcome
