"""gemv of the row kernels against a plain read of the same bytes, on 1 and on all threads.

For each weight type and thread count, a matrix of --columns columns (default DeepSeek-V3's hidden width, 7168;
the default preset's rows are 2048 and 768 wide) and about --matrix-mib MiB (well above the last-level cache) is built by tiling a few quantized rows;
then, in rounds that alternate their order (memory bandwidth drifts over seconds), it times
  * numpy reading the same bytes (np.add.reduce over a uint64 view), and
  * numatune._kernels.gemv of every row-kernel variant this CPU runs (x quantized inside),
  * numatune's own read loop (the yardstick of benchmarks/engine.py) on arrays of the same size,
and prints weight GB/s (decimal) as median ± half-IQR, with the ratio to the numpy read.
With T threads, the rows are cut into T contiguous shares, each read (or dotted) by one thread
pinned to its own CPU of --cpus, as the engine's workers do; numpy's read and the kernels release
the GIL. Prints a table; never judges the timings.

    python benchmarks/kernels.py [--types Q4_K,Q8_0,...] [--variants avx2,...] [--matrix-mib 512]
                                 [--columns 7168] [--threads 1,2] [--cpus 0,1]
                                 [--rounds 7] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numatune import _kernels, quants
from numatune.stats import Measurement

COLUMNS = 7168
TILE_ROWS = 64


@dataclass(frozen=True)
class Row:
    type_name: str
    threads: int
    reader: str  # "numpy read" or a variant name
    gbps: Measurement


def build_matrix(type_name: str, matrix_bytes: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    tile = quants.random_matrix(rng, TILE_ROWS, columns, type_name)   # IQ2/IQ3 types: random blocks
    copies = max(1, matrix_bytes // tile.nbytes)
    return np.tile(tile, (copies, 1))


def time_once(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def pinned_pool(cpus: list[int]) -> ThreadPoolExecutor:
    """A pool of len(cpus) threads, each pinned to one of the CPUs (sched_setaffinity(0) pins the
    calling thread only)."""
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for cpu in cpus:
        free.put(cpu)
    pool = ThreadPoolExecutor(len(cpus), initializer=lambda: os.sched_setaffinity(0, {free.get()}))
    list(pool.map(time.sleep, [0.05] * len(cpus)))   # start every thread (each takes one CPU)
    return pool


def measure(type_name: str, variants: list[str], cpus: list[int], args: argparse.Namespace) -> list[Row]:
    rng = np.random.default_rng(0)
    weights = build_matrix(type_name, args.matrix_mib << 20, args.columns, rng)
    x = rng.standard_normal(args.columns).astype(np.float32)
    shares = np.array_split(weights, len(cpus))            # contiguous rows, one share per thread
    words = [share.reshape(-1).view(np.uint64) for share in shares]
    pool = pinned_pool(cpus)

    def on_all(work):
        return lambda: list(pool.map(work, range(len(cpus))))

    readers = {"numpy read": on_all(lambda i: np.add.reduce(words[i]))}
    for variant in variants:
        readers[variant] = on_all(lambda i, variant=variant: _kernels.gemv(type_name, shares[i], x, isa=variant))
    samples: dict[str, list[float]] = {name: [] for name in readers}
    for run in readers.values():  # warm-up: page faults, clocks
        run()
    # The engine benchmark's yardstick: numatune's own read loop (its own arrays, same size).
    samples["membench read"] = []
    for round_number in range(args.rounds):
        order = list(readers) if round_number % 2 == 0 else list(reversed(readers))
        for name in order:
            samples[name].append(weights.nbytes / time_once(readers[name]) / 1e9)
        own = _kernels.membench_run("read", cpus, -1, weights.nbytes, 1)
        samples["membench read"].append(own["gbps"][0])
    pool.shutdown()
    return [Row(type_name, len(cpus), name, Measurement.of(values, "GB/s")) for name, values in samples.items()]


def print_table(rows: list[Row]) -> None:
    read = {(row.type_name, row.threads): row.gbps.median for row in rows if row.reader == "numpy read"}
    print(f"{'type':<5}  {'threads':>7}  {'reader':<17}  {'weight GB/s (median ± spread, n, min…max)':<44}  vs read")
    for row in rows:
        ratio = row.gbps.median / read[(row.type_name, row.threads)]
        print(f"{row.type_name:<5}  {row.threads:>7}  {row.reader:<17}  {row.gbps.describe():<44}  {ratio:5.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=",".join(_kernels.supported_types()))
    parser.add_argument("--variants", default=",".join(_kernels.quant_variants()))
    parser.add_argument("--matrix-mib", type=int, default=512)
    parser.add_argument("--columns", type=int, default=COLUMNS)
    parser.add_argument("--rounds", type=int, default=7)
    affinity = sorted(os.sched_getaffinity(0))
    parser.add_argument("--cpus", default=",".join(map(str, affinity)), help="CPUs, one per thread, in order")
    parser.add_argument("--threads", default=f"1,{len(affinity)}", help="thread counts to measure")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")]
    counts = sorted({int(t) for t in args.threads.split(",")})
    if not counts or counts[0] < 1 or counts[-1] > len(cpus):
        parser.error(f"--threads: each count must be 1..{len(cpus)} (the CPUs of --cpus)")
    variants = args.variants.split(",")
    rows: list[Row] = []
    for type_name in args.types.split(","):
        for threads in counts:
            rows += measure(type_name, variants, cpus[:threads], args)
    print(f"threads {counts} on CPUs {cpus}; {args.matrix_mib} MiB of weights, {args.columns} columns; "
          f"{args.rounds} rounds")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([{"type": r.type_name, "threads": r.threads, "reader": r.reader,
                                          "unit": "GB/s", "samples": list(r.gbps.samples)} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
