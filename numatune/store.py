"""Tuning results on disk: keyed by a host fingerprint, written atomically."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .config import Configuration
from .errors import NumatuneError
from .stats import Measurement
from .topology.model import Topology

T = TypeVar("T")

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Fingerprint:
    """What makes a measurement comparable: CPU model, topology, memory, kernel."""

    cpu_model: str
    packages: int
    cores: int
    pus: int
    nodes: tuple[tuple[int, tuple[int, ...]], ...]       # node → CPUs
    memory_gib: int
    kernel: str

    @property
    def host_id(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: "Fingerprint") -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [f"{key}: {theirs[key]!r} → {mine[key]!r}" for key in mine if mine[key] != theirs.get(key)]

    def to_json(self) -> dict:
        return {"cpu_model": self.cpu_model, "packages": self.packages, "cores": self.cores, "pus": self.pus,
                "nodes": {str(n): list(c) for n, c in self.nodes}, "memory_gib": self.memory_gib,
                "kernel": self.kernel}

    @classmethod
    def from_json(cls, data: dict) -> "Fingerprint":
        return cls(data["cpu_model"], int(data["packages"]), int(data["cores"]), int(data["pus"]),
                   tuple((int(n), tuple(c)) for n, c in sorted(data["nodes"].items(), key=lambda i: int(i[0]))),
                   int(data["memory_gib"]), data["kernel"])


def fingerprint(topology: Topology, kernel: Optional[str] = None) -> Fingerprint:
    """The kernel release is this machine's (`platform.release()`) unless given (captured roots)."""
    memory = topology.memory_total_bytes or sum(n.memory_total_bytes for n in topology.nodes)
    return Fingerprint(
        cpu_model=topology.isa.model_name or "unknown", packages=topology.packages, cores=topology.cores,
        pus=topology.pus, nodes=tuple((n.id, tuple(n.cpus)) for n in topology.nodes),
        memory_gib=round(memory / (1 << 30)), kernel=kernel if kernel is not None else platform.release())


@dataclass(frozen=True)
class Trial:
    """One configuration measured: decode tokens/s samples, weight GB/s, memory placed."""

    config: Configuration
    tokens_per_s: Measurement
    weight_gb_per_s: Optional[Measurement]
    resident_bytes: int
    stage: int                       # successive-halving round that measured it (0 = first)
    error: Optional[str] = None      # set when the trial failed; then the measurements are empty
    # CPUs the bundled engine's threads ran on, as its child reported them: the configuration's
    # CPUs less the target engine's reserved ones. None: not recorded (external engines, old files).
    compute_cpus: Optional[tuple[int, ...]] = None

    def to_json(self) -> dict:
        return {"config": self.config.to_json(), "tokens_per_s": self.tokens_per_s.to_json(),
                "weight_gb_per_s": self.weight_gb_per_s.to_json() if self.weight_gb_per_s else None,
                "resident_bytes": self.resident_bytes, "stage": self.stage, "error": self.error,
                "compute_cpus": list(self.compute_cpus) if self.compute_cpus is not None else None}

    @classmethod
    def from_json(cls, data: dict) -> "Trial":
        gbps = data.get("weight_gb_per_s")
        compute = data.get("compute_cpus")
        return cls(Configuration.from_json(data["config"]), _measurement(data["tokens_per_s"], "tokens_per_s"),
                   _measurement(gbps, "weight_gb_per_s") if gbps else None, int(data["resident_bytes"]),
                   int(data["stage"]), data.get("error"),
                   tuple(int(c) for c in compute) if compute is not None else None)


class CorruptResult(ValueError):
    """A result file whose figures contradict themselves."""


SUMMARY_FIELDS = ("median", "spread", "min", "max", "n")


def _measurement(data: dict, field: str) -> Measurement:
    """A saved measurement, refused when its summary (median, spread, min, max, n) is not what
    its own samples give: the file was edited or damaged, and which figure to trust is unknown."""
    measurement = Measurement.from_json(data)
    recomputed = measurement.to_json()
    for key in SUMMARY_FIELDS:
        if key in data and not math.isclose(float(data[key]), float(recomputed[key]), rel_tol=1e-9, abs_tol=1e-12):
            raise CorruptResult(f"{field}: {key} {data[key]!r} disagrees with its samples ({recomputed[key]!r})")
    return measurement


@dataclass(frozen=True)
class EngineBinary:
    """The program an external engine's trials ran: where, which bytes, which version and build."""

    path: str
    sha256: str
    version: str                     # what `--version` printed (first lines), or "unknown"
    build: tuple[tuple[str, str], ...]   # e.g. GGML_NATIVE=ON from its CMake cache, linked libraries

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "version": self.version, "build": dict(self.build)}

    @classmethod
    def from_json(cls, data: dict) -> "EngineBinary":
        return cls(data["path"], data["sha256"], data["version"],
                   tuple((str(k), str(v)) for k, v in data["build"].items()))


@dataclass(frozen=True)
class TargetEngine:
    """The engine a result was tuned for. `command` empty: trials ran the bundled engine placed as
    this engine is placed (with `sync_barriers` barriers per layer emulating its synchronisation);
    otherwise they ran this command (templated) and read it with `parser` or the `metric`
    regular expression."""

    name: str
    command: tuple[str, ...] = ()
    parser: Optional[str] = None
    metric: Optional[str] = None
    binary: Optional[EngineBinary] = None
    sync_barriers: int = 0

    @property
    def external(self) -> bool:
        return bool(self.command)

    def to_json(self) -> dict:
        return {"name": self.name, "command": list(self.command), "parser": self.parser, "metric": self.metric,
                "binary": self.binary.to_json() if self.binary else None, "sync_barriers": self.sync_barriers}

    @classmethod
    def from_json(cls, data: dict) -> "TargetEngine":
        binary = data.get("binary")
        return cls(data["name"], tuple(data.get("command") or ()), data.get("parser"), data.get("metric"),
                   EngineBinary.from_json(binary) if binary else None, int(data.get("sync_barriers") or 0))


@dataclass(frozen=True)
class NumaModeChoice:
    """One value of the engine's thread-placement flag (llama.cpp --numa) in a search: on how many
    configurations it was tried, and why not on the others (None: on all of them)."""

    flag: str
    mode: str
    tried: int
    why_not: Optional[str]

    def to_json(self) -> dict:
        return {"flag": self.flag, "mode": self.mode, "tried": self.tried, "why_not": self.why_not}

    @classmethod
    def from_json(cls, data: dict) -> "NumaModeChoice":
        return cls(str(data["flag"]), str(data["mode"]), int(data["tried"]), data.get("why_not"))


@dataclass(frozen=True)
class TuneResult:
    """What `numatune tune` saves: the host, the model measured, every trial, and the winner."""

    fingerprint: Fingerprint
    model: str
    trials: tuple[Trial, ...]
    winner: Optional[Trial]
    runner_up: Optional[Trial]
    complete: bool                   # False when interrupted: `--resume` continues it
    created: str                     # ISO 8601 time
    engine: Optional[TargetEngine] = None    # None: the bundled engine, placed for no particular target
    executed_share: Optional[float] = None   # share of a real decode step's weight bytes the engine runs
    step_bytes_per_token: int = 0            # weight bytes of that real decode step
    numa_modes: tuple[NumaModeChoice, ...] = ()   # the engine's --numa values the search tried, or why not

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "host_id": self.fingerprint.host_id,
                "fingerprint": self.fingerprint.to_json(), "model": self.model,
                "trials": [t.to_json() for t in self.trials],
                "winner": self.winner.to_json() if self.winner else None,
                "runner_up": self.runner_up.to_json() if self.runner_up else None,
                "complete": self.complete, "created": self.created,
                "engine": self.engine.to_json() if self.engine else None,
                "executed_share": self.executed_share, "step_bytes_per_token": self.step_bytes_per_token,
                "numa_modes": [m.to_json() for m in self.numa_modes]}

    @classmethod
    def from_json(cls, data: dict) -> "TuneResult":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise OtherVersion(version)
        opt = lambda key: Trial.from_json(data[key]) if data.get(key) else None  # noqa: E731
        trials = []
        for i, trial in enumerate(data["trials"]):
            try:
                trials.append(Trial.from_json(trial))
            except CorruptResult as exc:
                raise CorruptResult(f"trial {i}: {exc}") from None
        return cls(Fingerprint.from_json(data["fingerprint"]), data["model"], tuple(trials), opt("winner"),
                   opt("runner_up"), bool(data["complete"]), data["created"],
                   TargetEngine.from_json(data["engine"]) if data.get("engine") else None,
                   data.get("executed_share"), int(data.get("step_bytes_per_token") or 0),
                   tuple(NumaModeChoice.from_json(m) for m in data.get("numa_modes") or ()))


class OtherVersion(ValueError):
    def __init__(self, version) -> None:
        super().__init__(version)
        self.version = version


def data_dir() -> Path:
    """$NUMATUNE_DATA, else $XDG_DATA_HOME/numatune, else ~/.local/share/numatune."""
    if os.environ.get("NUMATUNE_DATA"):
        return Path(os.environ["NUMATUNE_DATA"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "numatune"


def default_path(fp: Fingerprint) -> Path:
    return data_dir() / "results" / f"{fp.host_id}.json"


def save_result(result: TuneResult, path: Optional[Path] = None) -> Path:
    path = Path(path) if path else default_path(result.fingerprint)
    write_atomically(path, json.dumps(result.to_json(), indent=2))
    return path


def write_atomically(path: Path, text: str) -> None:
    """Writes a file atomically: a temporary file in the same directory, flushed to disk, renamed
    into place, the directory synced; a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_json(path: Path, parse: Callable[[dict], T], what: str) -> T:
    """parse(the JSON document in `path`); a one-line error naming the file otherwise."""
    path = Path(path)
    try:
        return parse(json.loads(path.read_text()))
    except OSError as exc:
        raise NumatuneError(f"{path}: cannot read ({exc.strerror})") from None
    except OtherVersion as exc:
        older = isinstance(exc.version, int) and exc.version < SCHEMA_VERSION
        raise NumatuneError(f"{path}: result schema version {exc.version!r}, this numatune reads {SCHEMA_VERSION} "
                            f"({'an older numatune wrote it: tune again' if older else 'not written by this numatune'})"
                            ) from None
    except CorruptResult as exc:
        raise NumatuneError(f"{path}: corrupt result: {exc}") from None
    except NumatuneError as exc:          # the parser's own verdict (e.g. another schema version)
        raise type(exc)(f"{path}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise NumatuneError(f"{path}: not {what} ({reason})") from None


def load_result(path: Path) -> TuneResult:
    return load_json(path, TuneResult.from_json, "a numatune tuning result")


def saved_result(fp: Fingerprint) -> Optional[TuneResult]:
    """The saved result for this host, if any."""
    path = default_path(fp)
    return load_result(path) if path.is_file() else None
