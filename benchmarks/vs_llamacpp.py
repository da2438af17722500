"""The bundled engine against llama.cpp's llama-bench on the same GGUF, the same CPUs and the same
memory policy: decode speed per configuration, as effective GB/s of the bytes a token reads, and
whether the two rank the configurations alike.

Both run as the trials of `numatune tune` run them — placed child processes, placed the way
`launch` places llama.cpp (`launch.placement_for` with the llama.cpp profile: numactl
--physcpubind/--membind when installed) — over the same configurations: the thread counts of the
tune space (one per core, and every hardware thread when there is SMT) with each memory policy
(`--policies`, on all nodes). Each configuration is measured by each engine in turn, engines
alternating, for `--rounds` rounds, so that drift hits both alike.

Bytes a token reads, per engine:
- the bundled engine reads only what it executes: the routers and the top-k experts of each
  layer (as its own `bytes_per_token` counts them); its GB/s is that over its decode time;
- llama.cpp reads the whole token: the same experts, plus every non-expert weight (attention,
  norms, routers, shared experts, output head) and one row of the token embeddings, counted
  from the GGUF's tensors; the KV cache (a few kB at these contexts) is left out.

The gap is split, per configuration, by the time per token: llama.cpp's, minus the bundled
engine's for the experts, minus the time its non-expert bytes would take at the bundled engine's
GB/s; what remains is llama.cpp's compute and synchronisation beyond streaming weights (its
thread pool meets at a barrier after every graph node). With a generated model, llama.cpp is
also measured on a twin of the file whose experts are made tiny (width 32: the same graph, the
same nodes and barriers, the same attention and head, almost no expert bytes): its time per token
is llama.cpp's own non-expert work and synchronisation, and the difference its expert time.

The bundled engine runs twice per configuration: as it is, and emulating llama.cpp's
synchronisation (the llama.cpp profile's `sync`: that many barriers per layer, as
`tune --engine llama.cpp` runs it when llama-bench is not there); each is ranked against llama.cpp.

    python benchmarks/vs_llamacpp.py [--model FILE.gguf | --layers 4 --experts 64 --type Q8_0]
        [--llama-bench PATH] [--tokens 64] [--repeats 5] [--rounds 1] [--policies bind] [--json out.json]

llama-bench: --llama-bench, else on PATH, else the one tools/build-llama-bench.sh cached.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gguf

from numatune.config import Configuration
from numatune.errors import NumatuneError
from numatune.external import ExternalTrials, external_engine, resolve_program
from numatune.fullmodel import synthesize_complete
from numatune.profiles import find_engine_profile
from numatune.search import Stage, build_space
from numatune.stats import Measurement
from numatune.synth import PRESETS, cache_dir
from numatune.sysfs import Root
from numatune.topology import probe
from numatune.trial import ModelChoice, run_trial

ROOT = Path(__file__).resolve().parent.parent


def token_bytes(path: Path) -> dict:
    """Bytes one decoded token reads, from the GGUF: the MoE part the bundled engine executes
    (routers and the top-k experts of each layer), the rest of the weights, and one row of the
    token embeddings."""
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    top_k = int(reader.fields[f"{arch}.expert_used_count"].parts[-1][0])
    experts = int(reader.fields[f"{arch}.expert_count"].parts[-1][0])
    routed = other = 0
    for t in reader.tensors:
        if t.name.endswith("_exps.weight"):
            routed += int(t.n_bytes) * top_k // experts
        elif ".ffn_gate_inp." in t.name or ".exp_probs_b." in t.name:     # routers: the bundled engine runs them too
            routed += int(t.n_bytes)
        elif t.name == "token_embd.weight":
            other += int(t.n_bytes) // int(t.shape[-1])
        else:
            other += int(t.n_bytes)
    return {"routed_experts": routed, "non_expert": other, "whole_token": routed + other}


def find_llama_bench(given: str | None) -> Path:
    if given:
        return Path(given)
    on_path = resolve_program("llama-bench")
    if on_path:
        return on_path
    done = subprocess.run(["bash", str(ROOT / "tools" / "build-llama-bench.sh"), "--cached-only"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NumatuneError("no llama-bench: give --llama-bench, put it on PATH, or run tools/build-llama-bench.sh")
    return Path(done.stdout.strip())


def configurations(topology, weight_bytes: int, policies: list[str]) -> list[Configuration]:
    """The tune space's CPU sets (threads × SMT per node set), each with every policy asked."""
    space = build_space(topology, weight_bytes, find_engine_profile("llama.cpp"))
    cpu_sets = sorted({(c.cpus, c.nodes) for c in space.candidates}, key=lambda x: (len(x[1]), len(x[0]), x[0]))
    return [Configuration(cpus, policy, nodes) for cpus, nodes in cpu_sets for policy in policies]


def ranks(values: list[float]) -> list[float]:
    """Ranks from 1 (largest) with ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the two rank vectors."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a complete GGUF (default: a generated qwen3moe one)")
    parser.add_argument("--preset", default="qwen3-30b-a3b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--type", default="Q8_0")
    parser.add_argument("--llama-bench")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--policies", default="bind")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)

    topology = probe(Root.open("/"))
    if args.model:
        model = ModelChoice.from_file(args.model)
    else:
        path = cache_dir() / "models" / f"{args.preset}-complete-{args.type.upper()}-{args.layers}x{args.experts}.gguf"
        if not path.is_file():
            synthesize_complete(path, replace(PRESETS[args.preset], layers=args.layers, experts=args.experts), args.type)
        model = ModelChoice.from_file(path)
    sizes = token_bytes(model.path)
    tiny = None if args.model else tiny_expert_twin(args.preset, args.layers, args.experts, args.type)
    binary = find_llama_bench(args.llama_bench)
    llama_profile = find_engine_profile("llama.cpp")
    plain_profile = replace(llama_profile, sync=None)
    engine = external_engine(llama_profile, engine_bin=binary)
    llama = ExternalTrials(engine, topology)
    stage = Stage(args.tokens, args.repeats)
    configs = configurations(topology, model.path.stat().st_size, args.policies.split(","))
    runs = {"bundled": lambda c: run_trial(c, model, 0, stage, plain_profile),
            "emulated": lambda c: run_trial(c, model, 0, stage, llama_profile),
            "llama": lambda c: llama(c, model, 0, stage)}
    if tiny is not None:
        runs["llama_tiny"] = lambda c: llama(c, tiny, 0, stage)
    samples: dict[tuple, dict[str, list[float]]] = {c: {name: [] for name in runs} for c in configs}
    for _ in range(args.rounds):
        for config in configs:
            for name, run in runs.items():
                trial = run(config)
                if trial.error:
                    raise NumatuneError(f"{name} {config.label()}: {trial.error}")
                samples[config][name] += list(trial.tokens_per_s.samples)
    rows = [row(config, samples[config], sizes) for config in configs]
    summary = {"plain": agreement(rows, "bundled_tok_s"), "emulated": agreement(rows, "emulated_tok_s"),
               "sync_barriers_per_layer": llama_profile.sync_barriers}
    print_table(rows, sizes, summary, engine.binary.version, model.path)
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump({"model": str(model.path), "bytes_per_token": sizes, "llama_bench": engine.binary.to_json(),
                       "rows": rows, "agreement": summary}, out, indent=2)
    return 0


def tiny_expert_twin(preset: str, layers: int, experts: int, type_name: str) -> ModelChoice:
    """The generated model with its experts 32 wide: llama.cpp builds the same graph for it."""
    path = cache_dir() / "models" / f"{preset}-complete-tinyexperts-{type_name.upper()}-{layers}x{experts}.gguf"
    if not path.is_file():
        synthesize_complete(path, replace(PRESETS[preset], layers=layers, experts=experts, intermediate=32), type_name)
    return ModelChoice.from_file(path)


def row(config: Configuration, samples: dict, sizes: dict) -> dict:
    ours, theirs = statistics.median(samples["bundled"]), statistics.median(samples["llama"])
    emulated = statistics.median(samples["emulated"])
    t_llama, t_experts = 1 / theirs, 1 / ours
    ours_gbps = sizes["routed_experts"] * ours / 1e9
    t_non_expert = sizes["non_expert"] / (ours_gbps * 1e9)
    out = {"config": config.label(), "threads": config.threads, "policy": config.policy,
           "bundled_tok_s": ours, "emulated_tok_s": emulated, "llama_tok_s": theirs,
           "bundled_spread": Measurement.of(samples["bundled"]).spread,
           "emulated_spread": Measurement.of(samples["emulated"]).spread,
           "llama_spread": Measurement.of(samples["llama"]).spread,
           "bundled_expert_gb_s": ours_gbps, "emulated_expert_gb_s": sizes["routed_experts"] * emulated / 1e9,
           "llama_token_gb_s": sizes["whole_token"] * theirs / 1e9,
           "llama_time_ms": t_llama * 1e3, "experts_at_bundled_rate_ms": t_experts * 1e3,
           "non_expert_at_bundled_rate_ms": t_non_expert * 1e3,
           "rest_ms": (t_llama - t_experts - t_non_expert) * 1e3}
    if samples.get("llama_tiny"):
        # llama.cpp's own split: the tiny-expert twin's token is its non-expert work and barriers.
        t_tiny = 1 / statistics.median(samples["llama_tiny"])
        out.update(llama_tiny_time_ms=t_tiny * 1e3, llama_experts_ms=(t_llama - t_tiny) * 1e3)
    return out


def agreement(rows: list[dict], ours_key: str) -> dict:
    ours = [r[ours_key] for r in rows]
    theirs = [r["llama_tok_s"] for r in rows]
    best_ours = max(range(len(rows)), key=lambda i: ours[i])
    best_theirs = max(range(len(rows)), key=lambda i: theirs[i])
    return {"spearman": spearman(ours, theirs) if len(rows) > 1 else float("nan"),
            "bundled_winner": rows[best_ours]["config"], "llama_winner": rows[best_theirs]["config"],
            "winners_agree": best_ours == best_theirs, "configurations": len(rows)}


def print_table(rows: list[dict], sizes: dict, summary: dict, version: str, model: Path) -> None:
    print(f"model {model.name}: a token reads {sizes['routed_experts'] / 1e6:.1f} MB of routed experts, "
          f"{sizes['non_expert'] / 1e6:.1f} MB else ({sizes['whole_token'] / 1e6:.1f} MB); llama-bench {version}")
    print(f"{'configuration':34} {'bundled tok/s':>15} {'emulated tok/s':>15} {'llama tok/s':>14} "
          f"{'bundled GB/s':>12} {'emulated GB/s':>13} {'llama GB/s':>10} {'ratio':>6} {'ratio em.':>9} "
          f"{'llama ms':>9} {'experts':>8} {'non-exp':>8} {'rest':>7} {'llama tiny-expert ms':>20}")
    for r in rows:
        tiny = f"{r['llama_tiny_time_ms']:20.2f}" if "llama_tiny_time_ms" in r else f"{'-':>20}"
        print(f"{r['config']:34} {r['bundled_tok_s']:8.1f} ± {r['bundled_spread']:4.1f} "
              f"{r['emulated_tok_s']:8.1f} ± {r['emulated_spread']:4.1f} "
              f"{r['llama_tok_s']:7.1f} ± {r['llama_spread']:4.1f} {r['bundled_expert_gb_s']:12.2f} "
              f"{r['emulated_expert_gb_s']:13.2f} {r['llama_token_gb_s']:10.2f} "
              f"{r['bundled_expert_gb_s'] / r['llama_token_gb_s']:6.2f} "
              f"{r['emulated_expert_gb_s'] / r['llama_token_gb_s']:9.2f} "
              f"{r['llama_time_ms']:9.2f} {r['experts_at_bundled_rate_ms']:8.2f} "
              f"{r['non_expert_at_bundled_rate_ms']:8.2f} {r['rest_ms']:7.2f} {tiny}")
    for name, label in (("plain", "bundled engine as it is"),
                        ("emulated", f"bundled engine with {summary['sync_barriers_per_layer']} barriers per layer")):
        s = summary[name]
        print(f"{label}: Spearman rank correlation with llama.cpp over {s['configurations']} configurations: "
              f"{s['spearman']:.2f}; winners {'agree' if s['winners_agree'] else 'differ'} "
              f"(bundled: {s['bundled_winner']}; llama.cpp: {s['llama_winner']})")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NumatuneError as error:
        print(f"vs_llamacpp.py: {error}", file=sys.stderr)
        sys.exit(2)
