"""What the separate passes over shared experts and dense FFN blocks cost the engine.

The engine computes a layer's shared expert (and a dense block's FFN) as its own pass over the
workers, after the routed experts, not fused with them. This decodes two synthetic models of one
preset (DeepSeek-V3 shapes by default) that differ only in those parts: "full" (its dense blocks
and shared expert) and "routed only" (neither), alternating round by round, and prints each
one's weight GB/s (bytes the engine reads per token × tokens/s) as median ± spread. If the extra
passes cost nothing beyond their bytes, the two GB/s tie; the last line gives the time per token
the full model takes beyond its bytes at the routed-only model's GB/s. Never asserts.

    python benchmarks/shared_dense.py [--preset deepseek-v3] [--type Q4_K_M] [--experts 16]
                                      [--layers 2] [--dense-layers 1] [--rounds 5] [--tokens 16]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from numatune.engine import Engine
from numatune.stats import Measurement
from numatune.synth import preset, synthesize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deepseek-v3")
    parser.add_argument("--type", default="Q4_K_M")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="MoE layers")
    parser.add_argument("--dense-layers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args(argv)
    base = preset(args.preset, layers=args.layers, experts=args.experts)
    full = replace(base, dense_layers=min(args.dense_layers, base.dense_layers))
    routed = replace(base, dense_layers=0, shared_width=0, shared_gate=False)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"    python benchmarks/shared_dense.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"{'threads':>7}  {'model':<12} {'MB/token':>9}  {'weight GB/s':>16}  {'ms/token':>16}")
    with tempfile.TemporaryDirectory() as scratch:
        paths = {name: synthesize(Path(scratch) / f"{name}.gguf", chosen, args.type, seed=1).path
                 for name, chosen in (("full", full), ("routed only", routed))}
        for threads in sorted({int(t) for t in args.threads.split(",")}):
            engines = {name: Engine.load(path, cpus[:threads], "first-touch") for name, path in paths.items()}
            gbps: dict[str, list[float]] = {name: [] for name in engines}
            ms: dict[str, list[float]] = {name: [] for name in engines}
            per_token = {}
            for i in range(args.rounds):
                order = list(engines) if i % 2 == 0 else list(reversed(engines))
                for name in order:
                    run = engines[name].decode_bench(tokens=args.tokens, warmup=args.warmup, seed=i)
                    gbps[name].append(run["gb_per_s"])
                    ms[name].append(1e3 / run["tokens_per_s"])
                    per_token[name] = run["bytes_per_token"]
            for name in engines:
                g, t = Measurement.of(gbps[name], "GB/s"), Measurement.of(ms[name], "ms")
                print(f"{threads:>7}  {name:<12} {per_token[name] / 1e6:9.1f}  {g.median:8.2f} ± {g.spread:5.2f}  "
                      f"{t.median:8.2f} ± {t.spread:5.2f}")
            routed_rate = Measurement.of(gbps["routed only"]).median * 1e9
            expected = per_token["full"] / routed_rate * 1e3
            extra = Measurement.of(ms["full"]).median - expected
            print(f"{threads:>7}  full model: {extra:+.2f} ms/token beyond its bytes at the routed-only GB/s "
                  f"({extra / expected:+.1%})")
            del engines
    return 0


if __name__ == "__main__":
    sys.exit(main())
