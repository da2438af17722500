"""`numatune model synth`: writes a real GGUF of MoE layers with real shapes and random weights.

Only what the engine reads is written: per MoE block the router (`ffn_gate_inp`, F32), DeepSeek's
selection bias (`exp_probs_b`), the stacked experts `ffn_{gate,up,down}_exps` and the shared expert
`ffn_{gate,up,down}_shexp` (qwen2moe: and its gate `ffn_gate_inp_shexp`) in the asked type, and the
dense FFN `ffn_{gate,up,down}` of the leading dense blocks (DeepSeek), with the routing metadata of
the real model (expert groups, gating function, normalisation, scale) as llama.cpp reads it. Weights are drawn from a normal
distribution and quantized by `numatune.quants` (ours for K-quants, gguf's for the others).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

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
    layers: int                      # MoE blocks (after the dense ones)
    description: str
    groups: int = 1                  # expert groups and groups used (DeepSeek-V3: 8 and 4)
    groups_used: int = 1
    gating_func: int | None = None   # written as {arch}.expert_gating_func (1 softmax, 2 sigmoid)
    normalize: bool | None = None    # {arch}.expert_weights_norm
    scale: float | None = None       # {arch}.expert_weights_scale
    selection_bias: bool = False     # exp_probs_b
    shared_width: int = 0            # shared expert width (0: none)
    shared_gate: bool = False        # qwen2moe's sigmoid gate of the shared expert
    dense_layers: int = 0            # leading dense blocks
    dense_width: int = 0


# Shapes and routing from the models' published configs (config.json on Hugging Face).
PRESETS = {
    "default": Preset("default", "qwen3moe", 2048, 768, 128, 8, 2,
                      "Qwen3-30B-A3B expert shapes (hidden 2048, width 768, top-8), for quick trials"),
    "qwen3-30b-a3b": Preset("qwen3-30b-a3b", "qwen3moe", 2048, 768, 128, 8, 4,
                            "Qwen3-30B-A3B (hidden 2048, width 768, 128 experts, top-8, softmax, "
                            "renormalised), a few of its 48 layers"),
    "deepseek-v3": Preset("deepseek-v3", "deepseek2", 7168, 2048, 32, 8, 2,
                          "DeepSeek-V3/R1 (hidden 7168, width 2048, top-8 in 4 of 8 expert groups, sigmoid "
                          "router with selection bias, renormalised, × 2.5, one shared expert, 3 dense "
                          "blocks of width 18432), 32 of its 256 experts and 2 of its 58 MoE layers",
                          groups=8, groups_used=4, gating_func=2, normalize=True, scale=2.5, selection_bias=True,
                          shared_width=2048, dense_layers=3, dense_width=18432),
    "qwen1.5-moe-a2.7b": Preset("qwen1.5-moe-a2.7b", "qwen2moe", 2048, 1408, 60, 4, 2,
                                "Qwen1.5-MoE-A2.7B (hidden 2048, width 1408, 60 experts, top-4, softmax "
                                "not renormalised, a shared expert of width 5632 with a sigmoid gate), "
                                "2 of its 24 layers", shared_width=5632, shared_gate=True),
    "mixtral-8x7b": Preset("mixtral-8x7b", "llama", 4096, 14336, 8, 2, 2,
                           "Mixtral-8x7B (hidden 4096, width 14336, 8 experts, top-2, softmax, renormalised), "
                           "2 of its 32 layers"),
    "llama4-scout": Preset("llama4-scout", "llama4", 5120, 8192, 16, 1, 2,
                           "Llama-4-Scout-17B-16E (hidden 5120, width 8192, 16 experts, top-1, sigmoid weight "
                           "on the expert's input, a shared expert of width 8192), 2 of its 48 layers",
                           shared_width=8192),
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
    if experts is not None and (experts % chosen.groups or experts // chosen.groups * chosen.groups_used < chosen.top_k):
        raise ModelError(f"--experts: {experts} does not split into the preset's {chosen.groups} expert groups "
                         f"with {chosen.top_k} experts in its {chosen.groups_used} groups used")
    return replace(chosen, layers=layers or chosen.layers, experts=experts or chosen.experts)


def synthesize(path: str | Path, chosen: Preset, type_name: str = "Q4_K_M", seed: int = 0,
               on_step: Optional[Callable[[str], None]] = None) -> SynthResult:
    """Writes the GGUF atomically (a temporary file renamed into place). `on_step` is called after
    each of the `chosen.layers + 1` steps (each layer made, then the file written)."""
    gate_t, up_t, down_t = expert_types(type_name)

    def fill(writer, rng) -> int:
        expert_bytes = 0
        for block in range(chosen.dense_layers):
            _add_ffn(writer, rng, chosen, f"blk.{block}.ffn_{{}}.weight", chosen.dense_width, gate_t, up_t, down_t)
        for block in range(chosen.dense_layers, chosen.dense_layers + chosen.layers):
            expert_bytes += _add_block(writer, rng, chosen, block, gate_t, up_t, down_t)
            if on_step:
                on_step(f"layer {block + 1} of {chosen.layers} made")
        return expert_bytes
    return write_gguf(path, chosen, type_name, seed, fill, on_step)


def write_gguf(path: str | Path, chosen: Preset, type_name: str, seed: int, fill,
               on_step: Optional[Callable[[str], None]] = None) -> SynthResult:
    """A GGUF of `chosen`'s architecture with its MoE metadata, the tensors `fill(writer, rng)`
    adds (it returns the bytes of routed experts), written to a temporary file renamed into place;
    `on_step("written")` at the end."""
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
        if on_step:
            on_step("written")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SynthResult(str(path), chosen, type_name.upper(), expert_bytes, path.stat().st_size)


# Experts quantized one by one from random floats; the rest are made of rows drawn at random
# from those (each row a valid block sequence of the type), so that gigabytes are written in
# seconds: quantizing every expert of a large preset would take minutes in numpy. A single
# matrix (a shared expert, a dense FFN) has at most QUANTIZED_ROWS rows quantized, likewise.
QUANTIZED_EXPERTS = 8
QUANTIZED_ROWS = 2048


def _random_experts(rng, experts: int, rows: int, cols: int, type_name: str) -> np.ndarray:
    """uint8 experts × rows × row_bytes of random weights in the type."""
    if experts == 1 and rows > QUANTIZED_ROWS:
        pool_rows = _random_experts(rng, 1, QUANTIZED_ROWS, cols, type_name)[0]
        drawn = rng.integers(0, QUANTIZED_ROWS, size=rows - QUANTIZED_ROWS)
        return np.concatenate([pool_rows, pool_rows[drawn]])[None]
    pool = []
    for _ in range(min(experts, QUANTIZED_EXPERTS)):
        pool.append(quants.random_matrix(rng, rows, cols, type_name))
    if experts == len(pool):
        return np.stack(pool)
    pool_rows = np.concatenate(pool)
    drawn = rng.integers(0, pool_rows.shape[0], size=(experts - len(pool)) * rows)
    rest = pool_rows[drawn].reshape(experts - len(pool), rows, -1)
    return np.concatenate([np.stack(pool), rest])


def _metadata(writer, p: Preset) -> None:
    arch = p.architecture
    writer.add_name(f"numatune synthetic {p.name}")
    writer.add_uint32(f"{arch}.block_count", p.dense_layers + p.layers)
    writer.add_uint32(f"{arch}.embedding_length", p.hidden)
    writer.add_uint32(f"{arch}.expert_count", p.experts)
    writer.add_uint32(f"{arch}.expert_used_count", p.top_k)
    writer.add_uint32(f"{arch}.expert_feed_forward_length", p.intermediate)
    if p.groups > 1:
        writer.add_uint32(f"{arch}.expert_group_count", p.groups)
        writer.add_uint32(f"{arch}.expert_group_used_count", p.groups_used)
    if p.gating_func is not None:
        writer.add_uint32(f"{arch}.expert_gating_func", p.gating_func)
    if p.normalize is not None:
        writer.add_bool(f"{arch}.expert_weights_norm", p.normalize)
    if p.scale is not None:
        writer.add_float32(f"{arch}.expert_weights_scale", p.scale)
    if p.shared_width:
        if arch == "deepseek2":     # llama.cpp: shared width = expert width × shared count
            writer.add_uint32(f"{arch}.expert_shared_count", p.shared_width // p.intermediate)
        else:
            writer.add_uint32(f"{arch}.expert_shared_feed_forward_length", p.shared_width)
    if p.dense_layers:
        writer.add_uint32(f"{arch}.leading_dense_block_count", p.dense_layers)
        writer.add_uint32(f"{arch}.feed_forward_length", p.dense_width)
    if arch == "llama4":
        writer.add_uint32(f"{arch}.interleave_moe_layer_step", 1)


def _add_block(writer, rng, p: Preset, block: int, gate_t: str, up_t: str, down_t: str) -> int:
    # Scales like a trained layer's: unit-variance activations stay O(1) through the experts.
    prefix = f"blk.{block}."
    router = rng.standard_normal((p.experts, p.hidden), dtype=np.float32) / np.float32(np.sqrt(p.hidden))
    writer.add_tensor(prefix + "ffn_gate_inp.weight", router)
    if p.selection_bias:
        writer.add_tensor(prefix + "exp_probs_b.bias", rng.standard_normal(p.experts, dtype=np.float32) * np.float32(0.01))
    if p.shared_width:
        _add_ffn(writer, rng, p, prefix + "ffn_{}_shexp.weight", p.shared_width, gate_t, up_t, down_t)
    if p.shared_gate:
        gate_inp = rng.standard_normal(p.hidden, dtype=np.float32) / np.float32(np.sqrt(p.hidden))
        writer.add_tensor(prefix + "ffn_gate_inp_shexp.weight", gate_inp)
    total = 0
    for name, type_name, rows, cols in (("ffn_gate_exps", gate_t, p.intermediate, p.hidden),
                                        ("ffn_up_exps", up_t, p.intermediate, p.hidden),
                                        ("ffn_down_exps", down_t, p.hidden, p.intermediate)):
        data = _random_experts(rng, p.experts, rows, cols, type_name)
        kind = gguf.GGMLQuantizationType[type_name]
        writer.add_tensor(prefix + name + ".weight", data, raw_dtype=kind)
        total += data.nbytes
    return total


def _add_ffn(writer, rng, p: Preset, name: str, width: int, gate_t: str, up_t: str, down_t: str) -> None:
    """One FFN (a shared expert or a dense block's): 2-D gate, up and down tensors."""
    for part, type_name, rows, cols in (("gate", gate_t, width, p.hidden), ("up", up_t, width, p.hidden),
                                        ("down", down_t, p.hidden, width)):
        data = _random_experts(rng, 1, rows, cols, type_name)[0]
        writer.add_tensor(name.format(part), data, raw_dtype=gguf.GGMLQuantizationType[type_name])


def cache_dir() -> Path:
    """Where generated models are kept: $NUMATUNE_CACHE, else $XDG_CACHE_HOME/numatune, else ~/.cache."""
    if os.environ.get("NUMATUNE_CACHE"):
        return Path(os.environ["NUMATUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "numatune"


def cached_model(name: str, type_name: str = "Q4_K_M", layers: int | None = None,
                 experts: int | None = None, make=None, kind: str = "") -> Path:
    """A preset's GGUF, made by `make(path, preset, type)` (default: `synthesize`) on first use and
    kept in the cache directory; `kind` tells other makers' files apart (e.g. "complete-")."""
    chosen = preset(name, layers, experts)
    expert_types(type_name)
    # "r2": files of this layout (routing metadata, shared experts, dense blocks); older cached
    # files of the same preset lack them and are not reused.
    path = cache_dir() / "models" / f"{chosen.name}-{kind}{type_name.upper()}-r2-{chosen.layers}x{chosen.experts}.gguf"
    if not path.is_file():
        (make or synthesize)(path, chosen, type_name)
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
