"""Complete synthetic models: what `numatune model synth --complete` adds to the MoE layers so
that llama.cpp loads the file and decodes with it (llama-bench, llama-cli).

Next to each layer's router and experts (written by `synth`): the token embeddings, the
attention of the architecture with its norms, the FFN norm, the output norm and head, and a
small SentencePiece-style vocabulary in the GGUF metadata (`tokenizer.ggml.*`: special tokens,
the 256 byte tokens llama.cpp's SPM tokenizer falls back to, and word pieces). Weights are
random, drawn like the experts; the attention shapes are the real model's (Qwen3-30B-A3B:
32 query heads and 4 KV heads of 128; DeepSeek-V3: multi-head latent attention with a 1536-wide
query and a 512-wide KV latent), so a decoded token reads what the real layer reads, at a
smaller vocabulary and fewer layers and experts.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from . import quants
from .errors import ModelError
from .synth import Preset, SynthResult, _add_block, _add_ffn, cached_model, expert_types, write_gguf

VOCAB_SIZE = 1024
SPECIAL = ("<unk>", "<s>", "</s>")
# Rows quantized one by one per matrix; the others are drawn from them (see synth.QUANTIZED_EXPERTS).
QUANTIZED_ROWS = 256


@dataclass(frozen=True)
class Attention:
    """The attention of an architecture, at the real model's sizes."""

    heads: int
    kv_heads: int
    head_dim: int
    # multi-head latent attention (deepseek2) only
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    nope_dim: int = 0
    v_head_dim: int = 0


ATTENTION = {
    "qwen3moe": Attention(heads=32, kv_heads=4, head_dim=128),
    "deepseek2": Attention(heads=128, kv_heads=1, head_dim=192, q_lora_rank=1536, kv_lora_rank=512,
                           rope_dim=64, nope_dim=128, v_head_dim=128),
}


def dense_types(type_name: str) -> dict[str, str]:
    """Types of the non-expert matrices, as llama.cpp's quantize gives them for the mix: Q4_K_M
    keeps attn_v and the output head at Q6_K; a single type is used everywhere."""
    gate_t, _, down_t = expert_types(type_name)
    if type_name.upper() == "Q4_K_M":
        return {"attn": "Q4_K", "attn_v": "Q6_K", "embd": "Q4_K", "output": "Q6_K"}
    return {"attn": gate_t, "attn_v": gate_t, "embd": gate_t, "output": down_t}


def vocabulary(size: int = VOCAB_SIZE) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a SentencePiece vocabulary: <unk> <s> </s>, the byte
    tokens <0x00>…<0xFF>, then pieces ('▁a', 'a', '▁ab', …) with decreasing scores."""
    tokens = list(SPECIAL) + [f"<0x{b:02X}>" for b in range(256)]
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.CONTROL)] \
        + [int(gguf.TokenType.BYTE)] * 256
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    if size < len(tokens) + 1:
        raise ModelError(f"vocabulary: {size} tokens is fewer than the {len(tokens) + 1} needed")
    wanted = size - len(tokens)
    pieces = [p for first in letters for p in ("\u2581" + first, first)]
    length = 2
    while len(pieces) < wanted:           # then '▁ee', '▁et', …; then three letters, and so on
        for word in itertools.product(letters, repeat=length):
            pieces.append("\u2581" + "".join(word))
            if len(pieces) >= wanted:
                break
        length += 1
    pieces = pieces[:wanted]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    return tokens + pieces, scores, types + [int(gguf.TokenType.NORMAL)] * len(pieces)


def _matrix(rng, rows: int, cols: int, type_name: str) -> np.ndarray:
    """rows × cols random weights (unit-variance outputs for unit-variance inputs) in the type."""
    pool_rows = min(rows, QUANTIZED_ROWS)
    if type_name == "F32":
        pool = rng.standard_normal((pool_rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
    else:
        pool = quants.random_matrix(rng, pool_rows, cols, type_name)
    if pool_rows == rows:
        return pool
    return pool[rng.integers(0, pool_rows, size=rows)]


def _add(writer, name: str, data: np.ndarray, type_name: str) -> int:
    if type_name == "F32":
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    else:
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[type_name])
    return data.nbytes


def _norm(size: int) -> np.ndarray:
    return np.ones(size, dtype=np.float32)


def _complete_metadata(writer, p: Preset, attention: Attention, vocab_size: int) -> None:
    arch = p.architecture
    writer.add_uint32(f"{arch}.context_length", 4096)
    writer.add_uint32(f"{arch}.attention.head_count", attention.heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", attention.kv_heads)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_uint32(f"{arch}.vocab_size", vocab_size)
    if arch == "deepseek2":
        writer.add_uint32(f"{arch}.attention.q_lora_rank", attention.q_lora_rank)
        writer.add_uint32(f"{arch}.attention.kv_lora_rank", attention.kv_lora_rank)
        # MLA as current GGUFs store it: one KV head, the latent (and rope) as key, the latent
        # as value; the per-head sizes after decompression in the *_mla keys.
        writer.add_uint32(f"{arch}.attention.key_length", attention.kv_lora_rank + attention.rope_dim)
        writer.add_uint32(f"{arch}.attention.value_length", attention.kv_lora_rank)
        writer.add_uint32(f"{arch}.attention.key_length_mla", attention.nope_dim + attention.rope_dim)
        writer.add_uint32(f"{arch}.attention.value_length_mla", attention.v_head_dim)
        writer.add_uint32(f"{arch}.rope.dimension_count", attention.rope_dim)
        if not p.dense_layers:       # else synth's MoE metadata has them (the preset's dense blocks)
            writer.add_uint32(f"{arch}.leading_dense_block_count", 0)
            writer.add_uint32(f"{arch}.feed_forward_length", p.intermediate)
        if not p.shared_width:       # else synth's MoE metadata has it (the preset's shared expert)
            writer.add_uint32(f"{arch}.expert_shared_count", 1)
        writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    else:
        writer.add_uint32(f"{arch}.attention.key_length", attention.head_dim)
        writer.add_uint32(f"{arch}.attention.value_length", attention.head_dim)
        writer.add_float32(f"{arch}.rope.freq_base", 1000000.0)
    tokens, scores, types = vocabulary(vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)


def _attention_qwen3(writer, rng, p: Preset, a: Attention, prefix: str, types: dict) -> int:
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    total = _add(writer, prefix + "attn_q.weight", _matrix(rng, q, p.hidden, types["attn"]), types["attn"])
    total += _add(writer, prefix + "attn_k.weight", _matrix(rng, kv, p.hidden, types["attn"]), types["attn"])
    total += _add(writer, prefix + "attn_v.weight", _matrix(rng, kv, p.hidden, types["attn_v"]), types["attn_v"])
    total += _add(writer, prefix + "attn_output.weight", _matrix(rng, p.hidden, q, types["attn"]), types["attn"])
    total += _add(writer, prefix + "attn_q_norm.weight", _norm(a.head_dim), "F32")
    total += _add(writer, prefix + "attn_k_norm.weight", _norm(a.head_dim), "F32")
    return total


def _attention_mla(writer, rng, p: Preset, a: Attention, prefix: str, types: dict) -> int:
    """DeepSeek-V3's multi-head latent attention: a low-rank query, a shared KV latent with its
    rope part, and the per-head expansions split into k_b and v_b as current GGUFs store them."""
    t = types["attn"]
    key = a.nope_dim + a.rope_dim
    total = _add(writer, prefix + "attn_q_a.weight", _matrix(rng, a.q_lora_rank, p.hidden, t), t)
    total += _add(writer, prefix + "attn_q_a_norm.weight", _norm(a.q_lora_rank), "F32")
    total += _add(writer, prefix + "attn_q_b.weight", _matrix(rng, a.heads * key, a.q_lora_rank, t), t)
    total += _add(writer, prefix + "attn_kv_a_mqa.weight",
                  _matrix(rng, a.kv_lora_rank + a.rope_dim, p.hidden, t), t)
    total += _add(writer, prefix + "attn_kv_a_norm.weight", _norm(a.kv_lora_rank), "F32")
    # Per-head expansions of the latent; their rows are 128 and 512 wide, so they stay at Q8_0
    # (a K-quant needs rows of 256) unless the model is a float type.
    tb = t if t in ("F32", "F16", "BF16") else "Q8_0"
    k_b = _matrix(rng, a.heads * a.kv_lora_rank, a.nope_dim, tb)
    total += _add(writer, prefix + "attn_k_b.weight", k_b.reshape(a.heads, a.kv_lora_rank, -1), tb)
    v_b = _matrix(rng, a.heads * a.v_head_dim, a.kv_lora_rank, tb)
    total += _add(writer, prefix + "attn_v_b.weight", v_b.reshape(a.heads, a.v_head_dim, -1), tb)
    total += _add(writer, prefix + "attn_output.weight", _matrix(rng, p.hidden, a.heads * a.v_head_dim, t), t)
    return total


def _shared_expert(writer, rng, p: Preset, prefix: str, type_name: str) -> int:
    total = _add(writer, prefix + "ffn_gate_shexp.weight", _matrix(rng, p.intermediate, p.hidden, type_name), type_name)
    total += _add(writer, prefix + "ffn_up_shexp.weight", _matrix(rng, p.intermediate, p.hidden, type_name), type_name)
    total += _add(writer, prefix + "ffn_down_shexp.weight", _matrix(rng, p.hidden, p.intermediate, type_name), type_name)
    return total


def synthesize_complete(path: str | Path, chosen: Preset, type_name: str = "Q4_K_M", seed: int = 0,
                        vocab_size: int = VOCAB_SIZE) -> SynthResult:
    """Writes a complete model atomically (a temporary file renamed into place)."""
    if chosen.architecture not in ATTENTION:
        raise ModelError(f"--complete: no attention known for architecture '{chosen.architecture}'")
    gate_t, up_t, down_t = expert_types(type_name)
    types = dense_types(type_name)
    attention = ATTENTION[chosen.architecture]

    def fill(writer, rng) -> int:
        _complete_metadata(writer, chosen, attention, vocab_size)
        _add(writer, "token_embd.weight", _matrix(rng, vocab_size, chosen.hidden, types["embd"]), types["embd"])
        expert_bytes = 0
        for block in range(chosen.dense_layers + chosen.layers):
            prefix = f"blk.{block}."
            _add(writer, prefix + "attn_norm.weight", _norm(chosen.hidden), "F32")
            if chosen.architecture == "deepseek2":
                _attention_mla(writer, rng, chosen, attention, prefix, types)
            else:
                _attention_qwen3(writer, rng, chosen, attention, prefix, types)
            _add(writer, prefix + "ffn_norm.weight", _norm(chosen.hidden), "F32")
            if block < chosen.dense_layers:          # DeepSeek's leading dense blocks: a plain FFN
                _add_ffn(writer, rng, chosen, prefix + "ffn_{}.weight", chosen.dense_width, gate_t, up_t, down_t)
                continue
            if chosen.architecture == "deepseek2" and not chosen.shared_width:
                _shared_expert(writer, rng, chosen, prefix, types["attn"])    # synth's block adds the preset's
            expert_bytes += _add_block(writer, rng, chosen, block, gate_t, up_t, down_t)
        _add(writer, "output_norm.weight", _norm(chosen.hidden), "F32")
        _add(writer, "output.weight", _matrix(rng, vocab_size, chosen.hidden, types["output"]), types["output"])
        return expert_bytes
    return write_gguf(path, chosen, type_name, seed, fill)


def cached_complete_model(name: str, type_name: str = "Q4_K_M", layers: int | None = None,
                          experts: int | None = None) -> Path:
    """A preset's complete model, generated on first use and kept in the cache directory."""
    return cached_model(name, type_name, layers, experts, make=synthesize_complete, kind="complete-")
