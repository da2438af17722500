"""`numatune tune` and `numatune check`: the search run end to end, saved; and its winner
re-measured against a saved baseline."""
from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from . import store
from .errors import NumatuneError
from .profiles import EngineProfile
from .search import SearchState, Space, build_space, search, stage_plan, with_numa_modes
from .store import TargetEngine, Trial, TuneResult
from .topology.model import Topology
from .trial import ModelChoice, run_trial

ProgressHook = Callable[[SearchState, Trial, float], None]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _result(topology: Topology, model: ModelChoice, state: SearchState, complete: bool,
            engine: Optional[TargetEngine] = None, space: Optional[Space] = None) -> TuneResult:
    from .gguf_moe import read_moe_model
    ranked = state.final()
    moe = read_moe_model(model.path)
    return TuneResult(store.fingerprint(topology), model.label, tuple(state.trials),
                      ranked[0] if ranked else None, ranked[1] if len(ranked) > 1 else None,
                      complete, _now(), engine, moe.executed_share, moe.step_bytes_per_token,
                      space.numa_modes if space else ())


@dataclass
class TuneRun:
    space: Space
    result: TuneResult
    path: Path
    interrupted: bool


def tune(topology: Topology, model: ModelChoice, budget_s: float, target: Optional[EngineProfile] = None,
         numa_build: Optional[bool] = None, out: Optional[Path] = None, resume: bool = False,
         on_start: Optional[Callable[[Space], None]] = None, on_trial: Optional[ProgressHook] = None,
         measure=None, objective: str = "latency", engine: Optional[TargetEngine] = None) -> TuneRun:
    """Builds the space, searches it within the budget, and saves the result atomically (also
    when interrupted by Ctrl-C: what was measured is kept, marked incomplete). `measure` defaults
    to real trials of the bundled engine, handed this topology. `engine` is what the result
    records as measured (an external engine's command and binary, or the target)."""
    measure = measure or partial(run_trial, topology=topology)
    weight_bytes = model.path.stat().st_size
    space = build_space(topology, weight_bytes, target, numa_build, objective)
    if engine is not None and engine.external:      # the engine's own --numa modes: only it has them
        space = with_numa_modes(topology, space, target)
    if not space.candidates:
        reasons = "; ".join(f"{label}: {why}" for label, why in space.pruned[:3])
        raise NumatuneError(f"tune: nothing to measure, every configuration was pruned ({reasons})")
    path = Path(out) if out else store.default_path(store.fingerprint(topology))
    if engine is None and target is not None:
        engine = TargetEngine(target.name, sync_barriers=target.sync_barriers)
    state = SearchState()
    if resume:
        state.trials = list(_resumable(topology, model, path, engine).trials)
    if on_start:
        on_start(space)
    if hasattr(measure, "plan_budget"):     # external trials: each gets its share of the budget
        measure.plan_budget(budget_s, len(space.candidates))
    measure_one = lambda config, stage, plan: measure(config, model, stage, plan, target)  # noqa: E731
    interrupted = False
    try:
        search(space.candidates, measure_one, budget_s, state=state, on_trial=on_trial)
    except KeyboardInterrupt:
        interrupted = True
    result = _result(topology, model, state, complete=not interrupted, engine=engine, space=space)
    if result.trials:
        store.save_result(result, path)
    if interrupted:
        raise TuneInterrupted(result, path)
    return TuneRun(space, result, path, interrupted)


class TuneInterrupted(Exception):
    def __init__(self, result: TuneResult, path: Path) -> None:
        super().__init__("interrupted")
        self.result, self.path = result, path


def _measured_by(engine: Optional[TargetEngine]) -> str:
    if engine is None:
        return "the bundled engine"
    if not engine.external:
        count = engine.sync_barriers
        sync = f", {count} barrier{'s' if count != 1 else ''} per layer" if count else ""
        return f"the bundled engine placed for {engine.name}{sync}"
    return f"{engine.name} ({engine.binary.path if engine.binary else engine.command[0]})"


def _same_engine(saved: Optional[TargetEngine], now: Optional[TargetEngine]) -> bool:
    if (saved is not None and saved.external) != (now is not None and now.external):
        return False
    if (saved.name if saved else None) != (now.name if now else None):
        return False      # trials were limited to what the target engine can do
    if saved is None or not saved.external:
        return (saved.sync_barriers if saved else 0) == (now.sync_barriers if now else 0)
    return (saved.command, saved.parser, saved.metric) == (now.command, now.parser, now.metric) and \
        (saved.binary and saved.binary.sha256) == (now.binary and now.binary.sha256)


def _resumable(topology: Topology, model: ModelChoice, path: Path, engine: Optional[TargetEngine] = None) -> TuneResult:
    if not path.is_file():
        raise NumatuneError(f"--resume: no saved result at {path}")
    try:
        saved = store.load_result(path)
    except NumatuneError as exc:
        raise NumatuneError(f"--resume: {exc}") from None
    differences = store.fingerprint(topology).differences(saved.fingerprint)
    if differences:
        raise NumatuneError(f"--resume: {path} was measured on another host ({'; '.join(differences)})")
    if saved.model != model.label:
        raise NumatuneError(f"--resume: {path} measured model '{saved.model}', not '{model.label}'")
    if not _same_engine(saved.engine, engine):
        raise NumatuneError(f"--resume: {path} was measured with {_measured_by(saved.engine)}, "
                            f"not {_measured_by(engine)} (or with another command or binary)")
    return saved


# ---------------------------------------------------------------------------------------------
# check: CI regression guard

@dataclass(frozen=True)
class CheckOutcome:
    baseline: Trial
    current: Trial
    tolerance: float
    runner_up: Optional[Trial] = None           # the baseline's runner-up ...
    runner_up_now: Optional[Trial] = None       # ... re-measured

    @property
    def ratio(self) -> float:
        base = self.baseline.tokens_per_s.median
        return self.current.tokens_per_s.median / base if base else 0.0

    @property
    def regressed(self) -> bool:
        """Slower by more than the tolerance, and not within the two measurements' noise."""
        if self.current.error:
            return True
        return self.ratio < 1 - self.tolerance and not self.current.tokens_per_s.ties_with(self.baseline.tokens_per_s)

    @property
    def overtaken(self) -> bool:
        """The runner-up now beats the winner beyond the noise: time to tune again."""
        if self.runner_up_now is None or self.runner_up_now.error or self.current.error:
            return False
        now, other = self.current.tokens_per_s, self.runner_up_now.tokens_per_s
        return other.median > now.median and not other.ties_with(now)

    def reason(self) -> str:
        """One line: the verdict and the numbers behind it."""
        label = self.baseline.config.label()
        if self.current.error:
            return f"regression: {label} failed to run ({self.current.error})"
        verdict = "regression" if self.regressed else "ok"
        line = (f"{verdict}: {label} {self.current.tokens_per_s.median:.1f} tok/s vs baseline "
                f"{self.baseline.tokens_per_s.median:.1f} (ratio {self.ratio:.2f}, tolerance {self.tolerance:.0%})")
        if self.overtaken:
            line += f"; the runner-up ({self.runner_up.config.label()}) is now faster: tune again"
        return line

    def to_json(self) -> dict:
        return {"schema_version": 1, "baseline": self.baseline.to_json(), "current": self.current.to_json(),
                "ratio": self.ratio, "tolerance": self.tolerance, "regressed": self.regressed,
                "runner_up": self.runner_up.to_json() if self.runner_up else None,
                "runner_up_now": self.runner_up_now.to_json() if self.runner_up_now else None,
                "overtaken": self.overtaken, "reason": self.reason()}


class OtherHost(NumatuneError):
    pass


def default_tolerance(winner: Trial) -> float:
    """Three times the baseline's relative noise band, at least 5 %: a slowdown the baseline's
    own repeats would not explain."""
    return max(0.05, 3 * winner.tokens_per_s.relative_spread)


def check(topology: Topology, baseline_path: Path, tolerance: Optional[float] = None,
          allow_other_host: bool = False, measure=None) -> CheckOutcome:
    """Re-measures the saved winner (and runner-up) as they were measured: the same stage, the
    same engine (an external engine's binary must be the one measured, else NumatuneError),
    placed as the saved result's target engine is placed."""
    baseline = store.load_result(baseline_path)
    if baseline.winner is None:
        raise NumatuneError(f"{baseline_path}: the saved result has no winner to check")
    differences = store.fingerprint(topology).differences(baseline.fingerprint)
    if differences and not allow_other_host:
        raise OtherHost(f"{baseline_path}: measured on another host ({'; '.join(differences)}); "
                        "--allow-other-host to compare anyway")
    model = ModelChoice.from_label(baseline.model)
    engine = baseline.engine
    target = None
    if measure is None and engine is not None and engine.external:
        from .external import trials_for_record
        measure = trials_for_record(engine, topology)
    elif engine is not None:
        from .profiles import SyncSpec, find_engine_profile
        target = find_engine_profile(engine.name)
        # The synchronisation emulated as it was recorded, whatever the profile says today.
        sync = replace(target.sync or SyncSpec("graph-node", 0), barriers_per_layer=engine.sync_barriers)
        target = replace(target, sync=sync)
    measure = measure or partial(run_trial, topology=topology)
    # Measure as each was measured: same stage, hence same tokens and repeats.
    remeasure = lambda t: measure(t.config, model, t.stage, stage_plan(t.stage), target)  # noqa: E731
    winner, runner_up = baseline.winner, baseline.runner_up
    current = remeasure(winner)
    return CheckOutcome(winner, current, default_tolerance(winner) if tolerance is None else tolerance,
                        runner_up, remeasure(runner_up) if runner_up else None)
