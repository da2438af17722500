"""The engine's MoE layer outputs against the torch reference, per architecture × weight type.

For every architecture the engine accepts (one small synthetic model per preset below) and every
weight type the row kernels support (`_kernels.supported_types()`, so types added to the engine
join the table without editing this file), a GGUF is synthesized with all its FFN weights in that
type, loaded by the engine, and each layer is run on a few random tokens. The reference is
tests/moe_reference.py (float64 torch, every weight dequantized by `gguf.quants.dequantize`):
both sides read the same quantized weights, so the error measured is the engine's (8-bit
activations, float accumulation), not the quantization's. Prints a markdown table of the
largest relative error ‖y − y_ref‖ / ‖y_ref‖ over layers and tokens, and the number of
(layer, token) cases whose chosen experts differ from the reference's. Never asserts: the tests
do (tests/test_moe_reference.py).

    python benchmarks/correctness.py [--types Q4_K,Q8_0,...] [--tokens 3] [--variant avx2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import moe_reference as ref  # noqa: E402  (the tests' independent reference)

from numatune import _kernels  # noqa: E402
from numatune.engine import Engine  # noqa: E402
from numatune.synth import PRESETS, synthesize  # noqa: E402

# One preset per architecture the engine accepts, as GGUF names it.
ARCHITECTURES = {"deepseek2": "deepseek-v3", "qwen3moe": "qwen3-30b-a3b", "qwen2moe": "qwen1.5-moe-a2.7b",
                 "llama (mixtral)": "mixtral-8x7b", "llama4": "llama4-scout"}
# Widths a multiple of 256, so that every K-quant and IQ type has whole blocks.
HIDDEN, WIDTH, SHARED_WIDTH, DENSE_WIDTH = 256, 256, 512, 512


def small(name: str):
    p = PRESETS[name]
    return replace(p, hidden=HIDDEN, intermediate=WIDTH, experts=8 if p.experts == 8 else 16, layers=2,
                   dense_layers=min(p.dense_layers, 1), dense_width=DENSE_WIDTH if p.dense_layers else 0,
                   shared_width=SHARED_WIDTH if p.shared_width else 0)


def relative_error(y, y_ref) -> float:
    y_ref = np.asarray(y_ref, np.float64)
    return float(np.linalg.norm(np.asarray(y, np.float64) - y_ref) / np.linalg.norm(y_ref))


def measure(path: Path, tokens: int) -> tuple[float, int, int]:
    """(largest relative error, cases whose routing differs, cases) of one model."""
    engine = Engine.load(path, sorted(os.sched_getaffinity(0))[:1], "first-touch")
    routing, blocks = ref.load(path)
    worst, rerouted, cases = 0.0, 0, 0
    for layer, block in enumerate(blocks):
        for token in range(tokens):
            x = np.random.default_rng(100 * layer + token).standard_normal(engine.model.hidden).astype(np.float32)
            y, ids, _ = engine.route_and_forward(layer, x)
            y_ref, ids_ref, _ = ref.block_forward(routing, block, torch.tensor(x, dtype=torch.float64))
            worst = max(worst, relative_error(y, y_ref.numpy()))
            rerouted += list(ids) != ids_ref.tolist()
            cases += 1
    return worst, rerouted, cases


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default=",".join(_kernels.supported_types()))
    parser.add_argument("--tokens", type=int, default=3, help="random tokens per layer")
    parser.add_argument("--variant", default=None, help="kernel ISA to force (scalar, avx2, avx512); default: the best")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.variant:
        _kernels.set_active_isa(args.variant)
    types = args.types.split(",")
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for type_name in types:
            results[type_name] = {}
            for arch, name in ARCHITECTURES.items():
                path = Path(scratch) / f"{name}-{type_name}.gguf"
                try:
                    synthesize(path, small(name), type_name, seed=5)
                except (ValueError, KeyError, NotImplementedError) as error:   # no quantizer for the type yet
                    results[type_name][arch] = f"not synthesized ({error})"
                    continue
                results[type_name][arch] = measure(path, args.tokens)
                path.unlink()
    print(f"    python benchmarks/correctness.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"\ncommit {commit()}, kernels {_kernels.active_isa()}; hidden {HIDDEN}, expert width {WIDTH}, "
          f"shared {SHARED_WIDTH}, dense {DENSE_WIDTH}; {args.tokens} tokens per layer. Largest relative error "
          f"of a layer's output; in brackets, cases whose experts differ from the reference's.\n")
    print("| type | " + " | ".join(ARCHITECTURES) + " |")
    print("|---|" + "---|" * len(ARCHITECTURES))
    for type_name, row in results.items():
        cells = []
        for arch in ARCHITECTURES:
            cell = row[arch]
            if isinstance(cell, str):
                cells.append(cell)
            else:
                worst, rerouted, cases = cell
                cells.append(f"{worst:.2e}" + (f" ({rerouted}/{cases} rerouted)" if rerouted else ""))
        print(f"| {type_name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(
            {t: {a: (c if isinstance(c, str) else {"max_relative_error": c[0], "rerouted": c[1], "cases": c[2]})
                 for a, c in row.items()} for t, row in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
