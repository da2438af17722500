"""numatune's bandwidth kernels against a STREAM-like reference (benchmarks/stream_ref.c).

Both run the same kernels on arrays of the same size with the same threads on the same CPUs
(1 thread, then one per given CPU), memory placed by first touch. Runs of the two programs
alternate (A/B, then B/A) because memory bandwidth drifts over seconds. Prints a table; never
judges the timings.

    python benchmarks/bandwidth.py [--cpus 0,1] [--array-mib 256] [--rounds 6] [--repeats 5]
                                   [--kernels read,copy,triad] [--json results.json]

Pass one CPU per physical core (the default is every CPU this process may use).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from numatune import bandwidth  # noqa: E402
from numatune.stats import Measurement  # noqa: E402

SOURCE = REPO / "benchmarks" / "stream_ref.c"
BINARY = REPO / "benchmarks" / ".build" / "stream_ref"


@dataclass(frozen=True)
class Row:
    threads: int
    kernel: str
    ours: Measurement
    reference: Measurement

    @property
    def ratio(self) -> float:
        return self.ours.median / self.reference.median


def build_reference() -> Path:
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", str(SOURCE), "-o", str(BINARY)],
                       check=True)
    return BINARY


def run_reference(cpus: list[int], kernel: str, array_bytes: int, repeats: int) -> list[float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cpus)), OMP_PROC_BIND="close",
               OMP_PLACES=",".join(f"{{{cpu}}}" for cpu in cpus))
    done = subprocess.run([str(BINARY), str(array_bytes), str(repeats), kernel], env=env,
                          check=True, capture_output=True, text=True)
    name, *figures = done.stdout.split()
    if name != kernel:
        raise RuntimeError(f"unexpected output of {BINARY}: {done.stdout!r}")
    return [float(f) for f in figures]


def run_ours(cpus: list[int], kernel: str, array_bytes: int, repeats: int) -> list[float]:
    return list(bandwidth.measure(cpus, None, kernel, array_bytes, repeats).gbps.samples)


def compare(cpus: list[int], kernel: str, args: argparse.Namespace) -> Row:
    ours: list[float] = []
    reference: list[float] = []
    for round_number in range(args.rounds):
        runs = [(run_ours, ours), (run_reference, reference)]
        for run, samples in runs if round_number % 2 == 0 else reversed(runs):
            samples += run(cpus, kernel, args.array_mib << 20, args.repeats)
    return Row(len(cpus), kernel, Measurement.of(ours, "GB/s"), Measurement.of(reference, "GB/s"))


def print_table(rows: list[Row]) -> None:
    print(f"{'threads':>7}  {'kernel':<6}  {'numatune GB/s':<36}  {'reference GB/s':<36}  ratio")
    for row in rows:
        verdict = "  (tie)" if row.ours.ties_with(row.reference) else ""
        print(f"{row.threads:>7}  {row.kernel:<6}  {row.ours.describe():<36}  "
              f"{row.reference.describe():<36}  {row.ratio:.2f}{verdict}")


def to_json(rows: list[Row], cpus: list[int], args: argparse.Namespace) -> dict:
    return {"cpus": cpus, "array_bytes": args.array_mib << 20, "rounds": args.rounds,
            "repeats": args.repeats,
            "rows": [{"threads": r.threads, "kernel": r.kernel, "ratio": r.ratio,
                      "numatune": r.ours.to_json(), "reference": r.reference.to_json()}
                     for r in rows]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", help="comma-separated CPUs, one per physical core")
    parser.add_argument("--array-mib", type=int, default=bandwidth.MIN_ARRAY_BYTES >> 20,
                        help="MiB per array; make it at least 4× the last-level cache")
    parser.add_argument("--rounds", type=int, default=6, help="alternating runs of each program")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per run")
    parser.add_argument("--kernels", default=",".join(bandwidth.KERNELS))
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus
            else sorted(os.sched_getaffinity(0)))
    build_reference()
    rows = [compare(cpus[:threads], kernel, args)
            for threads in sorted({1, len(cpus)})
            for kernel in args.kernels.split(",")]
    print(f"CPUs {cpus}, {args.array_mib} MiB per array, {args.rounds} rounds × "
          f"{args.repeats} repetitions, memory by first touch")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(to_json(rows, cpus, args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
