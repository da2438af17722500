"""The bundled engine's weight traffic against the memory's read bandwidth, same CPUs, same memory.

For each weight type (Q4_K_M, Q8_0 by default) and thread count (1 and all cores), every round
measures the read bandwidth of the same CPUs on the same memory node, decodes `--tokens` tokens
with the engine, and measures the read bandwidth again; the ratio is taken per round, against the
mean of the two reads around the decode (bandwidth here drifts by ±15% within a minute, so only
same-round ratios mean anything). Prints median ± spread over rounds; never
asserts. Models are generated (numatune.synth) with enough layers that one pass over all experts
reads at least four times the last-level caches.

Before its timed tokens, each round decodes untimed ones (`--warmup`; by default four passes'
worth of tokens, 4 × experts / top-k), so that the engine is timed in its steady state, as the read
benchmark times its second pass over an array it has just written. Right after the read
benchmark (or an idle second) the engine's first tokens were measured up to 20-40 % slower, for
10-60 tokens, more with more experts; the cause was not found and the effect varied from hour to
hour (docs/benchmarks.md, "Warm and cold"). `--warmup 1` gives the cold figure.

    python benchmarks/engine.py [--types Q4_K_M,Q8_0] [--rounds 7] [--tokens 64] [--json out.json]

If `llama-bench` is on the PATH it is reported but not run: the generated GGUF holds only the MoE
layers, which llama.cpp cannot load; benchmarks/vs_llamacpp.py compares the two engines on a
complete model (`model synth --complete`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys

from numatune import bandwidth
from numatune.bench import pick_cpus
from numatune.engine import Engine
from numatune.errors import NumatuneError
from numatune.stats import Measurement
from numatune.synth import model_for_machine
from numatune.sysfs import Root
from numatune.topology import probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q4_K_M,Q8_0")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--experts", type=int, default=None,
                        help="experts per layer instead of the preset's (more: less of the model "
                             "per token, so less of it can stay in the L3 between tokens)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed tokens before each round's timed ones (default: four passes' "
                             "worth, 4 × experts / top-k)")
    parser.add_argument("--policy", default="bind")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    for flag, value, least in (("--rounds", args.rounds, 1), ("--tokens", args.tokens, 1),
                               ("--warmup", args.warmup, 0), ("--experts", args.experts, 1)):
        if value is not None and value < least:
            parser.error(f"{flag}: {value} is less than {least}")

    topology = probe(Root.open("/"))
    node = topology.nodes[0].id
    llc = max((c.size_bytes or 0 for c in topology.caches if c.type == "Unified"), default=0)
    cores = len(topology.one_cpu_per_core(topology.usable_cpus_of_node(node)))
    rows = []
    for type_name in args.types.split(","):
        path = model_for_machine(topology, type_name, args.preset, experts=args.experts)
        for threads in sorted({1, cores}):
            cpus = pick_cpus(topology, threads)
            engine = Engine.load(path, cpus, args.policy, [node] if args.policy == "bind" else None,
                                 topology=topology)
            model = engine.model
            warmup = args.warmup if args.warmup is not None else 4 * -(-model.experts // model.top_k)
            engine.decode_bench(tokens=8, warmup=2)
            weight, read, ratio = [], [], []
            def read_now() -> float:
                return bandwidth.measure(cpus, node, "read", repeats=1, llc_bytes=llc).gbps.median

            for i in range(args.rounds):
                before = read_now()
                run = engine.decode_bench(tokens=args.tokens, warmup=warmup, seed=i)
                bw = (before + read_now()) / 2     # the read bandwidth around this decode
                weight.append(run["gb_per_s"])
                read.append(bw)
                ratio.append(run["gb_per_s"] / bw)
            rows.append({"type": type_name, "threads": threads, "isa": run["isa"],
                         "bytes_per_token": run["bytes_per_token"], "warmup_tokens": warmup,
                         "model_bytes": engine.model.expert_bytes, "llc_bytes": llc,
                         "weight_gb_per_s": Measurement.of(weight, "GB/s").to_json(),
                         "read_gb_per_s": Measurement.of(read, "GB/s").to_json(),
                         "ratio": Measurement.of(ratio).to_json()})
            del engine
    print_table(rows)
    if shutil.which("llama-bench"):
        print("llama-bench found, not run: the generated GGUF has only MoE layers, which llama.cpp "
              "cannot load as a model (benchmarks/vs_llamacpp.py compares them on a complete one).")
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


def print_table(rows) -> None:
    print(f"{'type':8} {'thr':>3} {'isa':6} {'model GB':>8} {'MB/token':>9} {'weight GB/s':>18} "
          f"{'read GB/s':>18} {'weight/read':>16}  n")
    for r in rows:
        w, b, q = (Measurement.from_json(r[k]) for k in ("weight_gb_per_s", "read_gb_per_s", "ratio"))
        print(f"{r['type']:8} {r['threads']:>3} {r['isa']:6} {r['model_bytes'] / 1e9:8.2f} "
              f"{r['bytes_per_token'] / 1e6:9.1f} "
              f"{w.median:10.2f} ± {w.spread:5.2f} {b.median:10.2f} ± {b.spread:5.2f} "
              f"{q.median:8.3f} ± {q.spread:5.3f}  {q.n}")
    ratios = [Measurement.from_json(r["ratio"]).median for r in rows]
    print(f"lowest median ratio: {min(ratios):.3f}; mean {statistics.mean(ratios):.3f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NumatuneError as error:    # a bad preset, type or placement: one line, no traceback
        print(f"engine.py: {error}", file=sys.stderr)
        sys.exit(2)
