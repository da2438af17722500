"""`numatune model synth`: writes a real GGUF of MoE layers with real shapes and random weights.

Only what the engine reads is written: per MoE block the router (`ffn_gate_inp`, F32), DeepSeek's
selection bias (`exp_probs_b`), and the stacked experts `ffn_{gate,up,down}_exps` in the asked
type, with the metadata llama.cpp uses for these architectures. Weights are drawn from a normal
distribution and quantized by `numatune.quants` (ours for K-quants, gguf's for the others).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np

from . import quants
from .errors import ModelError
from .gguf_moe import SUPPORTED_TYPES

# A type name is either one GGUF type for all experts, or a mix as llama.cpp's quantize makes it.
MIXES = {"Q4_K_M": ("Q4_K", "Q4_K", "Q6_K")}   # gate, up, down: Q4_K_M keeps ffn_down at Q6_K
TYPES = tuple(MIXES) + tuple(SUPPORTED_TYPES)


@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    layers: int
    description: str


PRESETS = {
    "default": Preset("default", "qwen3moe", 2048, 768, 128, 8, 2,
                      "Qwen3-30B-A3B expert shapes (hidden 2048, width 768, top-8), for quick trials"),
    "qwen3-30b-a3b": Preset("qwen3-30b-a3b", "qwen3moe", 2048, 768, 128, 8, 4,
                            "Qwen3-30B-A3B (hidden 2048, width 768, top-8), a few of its 48 layers"),
    "deepseek-v3": Preset("deepseek-v3", "deepseek2", 7168, 2048, 16, 8, 2,
                          "DeepSeek-V3/R1 expert shapes (hidden 7168, width 2048, top-8, sigmoid "
                          "router), fewer of its 256 experts and 58 MoE layers"),
}


@dataclass(frozen=True)
class SynthResult:
    path: str
    preset: Preset
    type_name: str
    expert_bytes: int
    file_bytes: int


def expert_types(type_name: str) -> tuple[str, str, str]:
    key = type_name.upper()
    if key in MIXES:
        return MIXES[key]
    if key in SUPPORTED_TYPES:
        return (key, key, key)
    raise ModelError(f"--type: unknown type '{type_name}' (expected one of: {', '.join(TYPES)})")


def preset(name: str, layers: int | None = None, experts: int | None = None) -> Preset:
    if name not in PRESETS:
        raise ModelError(f"--preset: unknown preset '{name}' (expected one of: {', '.join(PRESETS)})")
    chosen = PRESETS[name]
    if experts is not None and experts < chosen.top_k:
        raise ModelError(f"--experts: {experts} is fewer than the {chosen.top_k} experts each token uses")
    return replace(chosen, layers=layers or chosen.layers, experts=experts or chosen.experts)


def synthesize(path: str | Path, chosen: Preset, type_name: str = "Q4_K_M", seed: int = 0) -> SynthResult:
    """Writes the GGUF atomically (a temporary file renamed into place)."""
    gate_t, up_t, down_t = expert_types(type_name)

    def fill(writer, rng) -> int:
        return sum(_add_block(writer, rng, chosen, block, gate_t, up_t, down_t) for block in range(chosen.layers))
    return write_gguf(path, chosen, type_name, seed, fill)


def write_gguf(path: str | Path, chosen: Preset, type_name: str, seed: int, fill) -> SynthResult:
    """A GGUF of `chosen`'s architecture with its MoE metadata, the tensors `fill(writer, rng)`
    adds (it returns the bytes of routed experts), written to a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, chosen.architecture)
        _metadata(writer, chosen)
        expert_bytes = fill(writer, rng)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SynthResult(str(path), chosen, type_name.upper(), expert_bytes, path.stat().st_size)


# Experts quantized one by one from random floats; the rest are made of rows drawn at random
# from those (each row a valid block sequence of the type), so that gigabytes are written in
# seconds: quantizing every expert of a large preset would take minutes in numpy.
QUANTIZED_EXPERTS = 8


def _random_experts(rng, experts: int, rows: int, cols: int, type_name: str) -> np.ndarray:
    """uint8 experts × rows × row_bytes of random weights in the type."""
    pool = []
    for _ in range(min(experts, QUANTIZED_EXPERTS)):
        values = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
        pool.append(quants.quantize(values, type_name))
    if experts == len(pool):
        return np.stack(pool)
    pool_rows = np.concatenate(pool)
    drawn = rng.integers(0, pool_rows.shape[0], size=(experts - len(pool)) * rows)
    rest = pool_rows[drawn].reshape(experts - len(pool), rows, -1)
    return np.concatenate([np.stack(pool), rest])


def _metadata(writer, p: Preset) -> None:
    arch = p.architecture
    writer.add_name(f"numatune synthetic {p.name}")
    writer.add_uint32(f"{arch}.block_count", p.layers)
    writer.add_uint32(f"{arch}.embedding_length", p.hidden)
    writer.add_uint32(f"{arch}.expert_count", p.experts)
    writer.add_uint32(f"{arch}.expert_used_count", p.top_k)
    writer.add_uint32(f"{arch}.expert_feed_forward_length", p.intermediate)
    if arch == "deepseek2":
        writer.add_uint32(f"{arch}.expert_gating_func", 2)      # sigmoid
        writer.add_bool(f"{arch}.expert_weights_norm", True)
        writer.add_float32(f"{arch}.expert_weights_scale", 2.5)


def _add_block(writer, rng, p: Preset, block: int, gate_t: str, up_t: str, down_t: str) -> int:
    # Scales like a trained layer's: unit-variance activations stay O(1) through the experts.
    prefix = f"blk.{block}."
    router = rng.standard_normal((p.experts, p.hidden), dtype=np.float32) / np.float32(np.sqrt(p.hidden))
    writer.add_tensor(prefix + "ffn_gate_inp.weight", router)
    if p.architecture == "deepseek2":
        writer.add_tensor(prefix + "exp_probs_b.bias", rng.standard_normal(p.experts, dtype=np.float32) * np.float32(0.01))
    total = 0
    for name, type_name, rows, cols in (("ffn_gate_exps", gate_t, p.intermediate, p.hidden),
                                        ("ffn_up_exps", up_t, p.intermediate, p.hidden),
                                        ("ffn_down_exps", down_t, p.hidden, p.intermediate)):
        data = _random_experts(rng, p.experts, rows, cols, type_name)
        kind = gguf.GGMLQuantizationType[type_name]
        writer.add_tensor(prefix + name + ".weight", data, raw_dtype=kind)
        total += data.nbytes
    return total


def cache_dir() -> Path:
    """Where generated models are kept: $NUMATUNE_CACHE, else $XDG_CACHE_HOME/numatune, else ~/.cache."""
    if os.environ.get("NUMATUNE_CACHE"):
        return Path(os.environ["NUMATUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "numatune"


def cached_model(name: str, type_name: str = "Q4_K_M", layers: int | None = None,
                 experts: int | None = None) -> Path:
    """A preset's GGUF, generated on first use and kept in the cache directory."""
    chosen = preset(name, layers, experts)
    expert_types(type_name)
    path = cache_dir() / "models" / f"{chosen.name}-{type_name.upper()}-{chosen.layers}x{chosen.experts}.gguf"
    if not path.is_file():
        synthesize(path, chosen, type_name)
    return path


def layer_bytes(chosen: Preset, type_name: str) -> int:
    """Bytes of one layer's routed experts in a type (what one pass over all experts reads)."""
    from .quants import row_bytes
    gate_t, up_t, down_t = expert_types(type_name)
    per_expert = (row_bytes(gate_t, chosen.hidden) + row_bytes(up_t, chosen.hidden)) * chosen.intermediate \
        + row_bytes(down_t, chosen.intermediate) * chosen.hidden
    return per_expert * chosen.experts


def model_for_machine(topology, type_name: str = "Q4_K_M", name: str = "default",
                      experts: int | None = None) -> Path:
    """A preset (with `experts` per layer if given) with enough layers that one pass over all
    experts reads at least four times the machine's last-level caches (all of them, every
    socket's), so that trials and benchmarks stream from memory rather than from cache."""
    caches = {(c.level, c.cpus): c.size_bytes or 0 for c in topology.caches if c.type == "Unified"}
    top = max((level for level, _ in caches), default=0)
    llc_total = sum(size for (level, _), size in caches.items() if level == top)
    base = preset(name, experts=experts)
    layers = max(base.layers, -(-4 * llc_total // layer_bytes(base, type_name)))
    return cached_model(name, type_name, layers=layers, experts=experts)
