"""GGUF weight quantization in numpy, for synthetic models and kernel tests.

gguf 0.19 reads every GGML type but quantizes only some: its own quantizers are used for Q8_0
(bit-exact with ggml's), Q4_0, Q4_1, Q5_0, Q5_1, F16 and BF16; the K-quants Q2_K..Q6_K, which it
cannot write, and IQ4_NL and IQ4_XS are quantized here, vectorised over blocks; MXFP4 is gguf's own
quantizer too. The lattice types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S are not
quantized at all (neither gguf nor here: ggml's codebook searches need an importance matrix):
`synthetic` writes random valid blocks of them, scaled like the weights, for synthetic models.
The bytes are ggml's block layouts (kernels/quant.h), so `gguf.quants.dequantize` and the engine
both read them.

How the K-quant scales are chosen (plain least squares, no importance matrix):

* Q4_K (Q5_K: q in 0..31; Q2_K: groups of 16, q in 0..3, scales and mins of 4 bits), each
  sub-block of 32 weights is w ≈ a·q − m with q in 0..15 and m ≥ 0. A few step
  sizes around (max − min)/15 are tried; for each the weights are rounded and (a, m) refitted
  by least squares; the candidate with the smallest squared error wins. The 8 scales and
  8 mins of a super-block are then stored as 6-bit multiples of two f16 super-scales
  (largest / 63), and the weights are rounded once more against the scales as stored.
* Q6_K (Q3_K: q in −4..3, scales of 6 bits as s − 32 against d = largest |a| / 31), each group
  of 16 is w ≈ a·q with q in −32..31. Step sizes around the one that maps
  the weight of largest magnitude to −32 (the longer side of the range) are tried, with a
  least-squares refit of a; the 16 scales are then stored as int8 multiples of one f16
  super-scale (largest |a| / 127) and the weights rounded against them.

* IQ4_NL (blocks of 32) and IQ4_XS (sub-blocks of 32 with 6-bit signed scales s − 32 against
  d = largest |a| / 31): a = (weight of largest magnitude) / −127, the first value of the grid,
  and each weight takes the nearest grid value of w / a (no search).

Trying a handful of steps and refitting recovers most of what ggml's longer searches gain over
plain min/max rounding, at a cost that keeps 50 M weights within a few seconds.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

TYPE_NAMES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
              "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
              "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ3_S", "MXFP4")

QK_K = 256
CHUNK_BLOCKS = 2048  # super-blocks quantized at once: bounds the temporaries to a few tens of MB

# Candidate step sizes, as offsets to the number of steps spanning the range (15 for Q4_K's
# 0..15; 32 for Q6_K's −32 side). More candidates gained little in the tests.
Q4_K_STEP_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0)
Q6_K_STEP_OFFSETS = (-1.5, -1.0, -0.5, 0.0, 0.5)


def ggml_type(type_name: str) -> GGMLQuantizationType:
    """The GGML type of a name as GGUF spells it ("Q4_K"); ValueError for one not supported."""
    if type_name not in TYPE_NAMES:
        raise ValueError(f"unsupported weight type '{type_name}' (expected one of {', '.join(TYPE_NAMES)})")
    return GGMLQuantizationType[type_name]


def bits_per_weight(type_name: str) -> float:
    """Bits per weight of any GGML type gguf knows (supported or not), e.g. IQ2_XXS → 2.0625."""
    weights, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return 8 * nbytes / weights


# Nearest-size suggestions prefer the K-quants, then the legacy and float types, on a tie.
_SUGGESTION_ORDER = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                     "BF16", "F16", "F32", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
                     "IQ3_S", "MXFP4")


def nearest_supported_type(type_name: str) -> Optional[str]:
    """The supported type closest in bits per weight to a GGML type, or None for an unknown one."""
    try:
        bits = bits_per_weight(type_name)
    except KeyError:
        return None
    return min(_SUGGESTION_ORDER, key=lambda t: abs(bits_per_weight(t) - bits))


def unsupported_type_message(tensor_name: str, type_name: str) -> str:
    """One line for a tensor of a type the engine cannot compute with, naming the nearest
    synthetic model (`model synth --type`) of about the same bits per weight."""
    nearest = nearest_supported_type(type_name)
    if nearest is None:
        return f"{tensor_name} is {type_name}, not supported (supported: {', '.join(TYPE_NAMES)})"
    return (f"{tensor_name} is {type_name} ({bits_per_weight(type_name):.3g} bpw), not supported; "
            f"nearest synthetic: --type {nearest} ({bits_per_weight(nearest):.3g} bpw)")


def block_size(type_name: str) -> tuple[int, int]:
    """(weights, bytes) of one block of the type."""
    return GGML_QUANT_SIZES[ggml_type(type_name)]


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of a row of n weights; ValueError unless n is a positive multiple of the block size."""
    weights, nbytes = block_size(type_name)
    if n <= 0 or n % weights:
        raise ValueError(f"{type_name}: a row of {n} weights is not a positive multiple of the "
                         f"block size {weights}")
    return n // weights * nbytes


def quantize(weights: np.ndarray, type_name: str) -> np.ndarray:
    """GGUF bytes of a float matrix: uint8 of shape (rows, row_bytes), rows over all leading axes.
    ValueError for RANDOM_BLOCK_TYPES, which nothing here quantizes (see `synthetic`)."""
    weights = np.asarray(weights, dtype=np.float32)
    n = weights.shape[-1] if weights.ndim else 0
    nbytes = row_bytes(type_name, n)
    rows = weights.reshape(-1, n)
    if type_name in RANDOM_BLOCK_TYPES:
        raise ValueError(f"{type_name}: no quantizer (gguf has none); synthetic models carry random valid blocks")
    if type_name in _OWN_QUANTIZERS:
        weights_per_block, quantize_blocks = _OWN_QUANTIZERS[type_name]
        blocks = _by_chunks(rows.reshape(-1, weights_per_block), quantize_blocks)
    else:
        blocks = gguf_quants.quantize(rows, ggml_type(type_name))
    return np.ascontiguousarray(blocks).view(np.uint8).reshape(rows.shape[0], nbytes)


# Lattice types that gguf 0.19 cannot quantize to and that are not quantized here either (their
# codebook searches are long): synthetic models carry random blocks of them. Every byte pattern
# is a valid block of these types; only the f16 scale d is chosen.
RANDOM_BLOCK_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")


def synthetic(weights: np.ndarray, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """GGUF bytes standing for a float matrix in a synthetic model, shaped as `quantize`'s: the
    quantized weights, or for RANDOM_BLOCK_TYPES random blocks whose d gives each block the
    root-mean-square of its weights (the size and magnitude of the weights, not their values)."""
    if type_name not in RANDOM_BLOCK_TYPES:
        return quantize(weights, type_name)
    weights = np.asarray(weights, dtype=np.float32)
    n = weights.shape[-1] if weights.ndim else 0
    nbytes = row_bytes(type_name, n)
    block_weights, block_bytes = block_size(type_name)
    rms = np.sqrt(np.mean(np.square(weights.reshape(-1, block_weights), dtype=np.float64), axis=-1))
    blocks = rng.integers(0, 256, size=(rms.size, block_bytes), dtype=np.uint8)
    _set_block_scale(blocks, type_name, (rms / _unit_block_rms(type_name)).astype(np.float16))
    return blocks.reshape(-1, nbytes)


def _set_block_scale(blocks: np.ndarray, type_name: str, d: np.ndarray) -> None:
    """Writes the f16 d of each block: its first two bytes, or IQ1_M's four top nibbles of scales."""
    bits = d.view(np.uint16)
    if type_name != "IQ1_M":
        blocks[:, :2] = bits.reshape(-1, 1).view(np.uint8)
        return
    scales = blocks[:, 48:56].copy().view(np.uint16)
    for k in range(4):
        scales[:, k] = (scales[:, k] & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12)
    blocks[:, 48:56] = scales.view(np.uint8)


@functools.lru_cache(maxsize=None)
def _unit_block_rms(type_name: str) -> float:
    """The root-mean-square weight of random blocks of the type with d = 1 (gguf's dequantization)."""
    blocks = np.random.default_rng(0).integers(0, 256, size=(4096, block_size(type_name)[1]), dtype=np.uint8)
    _set_block_scale(blocks, type_name, np.ones(len(blocks), np.float16))
    values = gguf_quants.dequantize(blocks, ggml_type(type_name))
    return float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))


def dequantize(data: np.ndarray, type_name: str, n: Optional[int] = None) -> np.ndarray:
    """Float32 weights of GGUF bytes (gguf's reader): rows of data, or rows of n weights."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if n is not None:
        data = data.reshape(-1, row_bytes(type_name, n))
    return np.asarray(gguf_quants.dequantize(data, ggml_type(type_name)), dtype=np.float32)


def _by_chunks(blocks: np.ndarray, quantize_blocks) -> np.ndarray:
    out = [quantize_blocks(blocks[start:start + CHUNK_BLOCKS])
           for start in range(0, blocks.shape[0], CHUNK_BLOCKS)]
    return np.concatenate(out) if len(out) > 1 else out[0]


def _f16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)


def _safe_inverse(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(values > 0, 1.0 / np.where(values > 0, values, 1), 0).astype(np.float32)


def _fit_affine(x: np.ndarray, lo: np.ndarray, span: np.ndarray,
                top: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Best (a, m ≥ 0) over the candidate steps for x ≈ a·q − m, q in 0..top, per row of x."""
    count = x.shape[-1]
    sum_x = x.sum(axis=-1)
    best_err = np.full(x.shape[0], np.inf, dtype=np.float32)
    best_a = np.zeros(x.shape[0], dtype=np.float32)
    best_m = np.zeros(x.shape[0], dtype=np.float32)
    shifted = x - lo[:, None]
    for offset in Q4_K_STEP_OFFSETS:
        inverse = _safe_inverse(span / np.float32(top + offset * top / 15))
        q = np.clip(np.rint(shifted * inverse[:, None]), 0, top)
        sum_q, sum_qq, sum_qx = q.sum(axis=-1), (q * q).sum(axis=-1), (q * x).sum(axis=-1)
        det = count * sum_qq - sum_q * sum_q
        free_a = (count * sum_qx - sum_q * sum_x) / np.where(det > 0, det, 1)
        free_b = (sum_x - free_a * sum_q) / count
        # The format needs −m ≤ 0: where the free fit goes above it (or q is constant), fit
        # through the origin; where q is all zero, the block is its (non-positive) mean.
        use_free = (det > 0) & (free_b <= 0)
        a = np.where(use_free, free_a, np.where(sum_qq > 0, sum_qx / np.where(sum_qq > 0, sum_qq, 1), 0))
        b = np.where(use_free, free_b, np.where(sum_qq > 0, 0, np.minimum(sum_x / count, 0)))
        a = np.maximum(a, 0)
        err = np.square(a[:, None] * q + b[:, None] - x).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_a = np.where(better, a, best_a)
        best_m = np.where(better, -b, best_m)
    return best_a, best_m


def _levels(values: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """values (blocks, groups) ≥ 0 as f16 super-scale (blocks,) times integers in 0..top."""
    scale = _f16(values.max(axis=-1) / top)
    levels = np.clip(np.rint(values * _safe_inverse(scale.astype(np.float32))[:, None]), 0, top)
    return scale, levels.astype(np.uint8)


def _affine_blocks(blocks: np.ndarray, group: int, top: int, scale_top: int):
    """Shared by Q2_K, Q4_K, Q5_K: (d, dmin, scale levels, min levels, q per group, in 0..top)."""
    n_blocks = blocks.shape[0]
    sub = blocks.reshape(-1, group)
    lo = np.minimum(sub.min(axis=-1), 0)
    a, m = _fit_affine(sub, lo, sub.max(axis=-1) - lo, top)
    d, sc = _levels(a.reshape(n_blocks, -1), scale_top)
    dmin, mins = _levels(m.reshape(n_blocks, -1), scale_top)
    step = (d.astype(np.float32)[:, None] * sc).reshape(-1)
    offset = (dmin.astype(np.float32)[:, None] * mins).reshape(-1)
    q = np.clip(np.rint((sub + offset[:, None]) * _safe_inverse(step)[:, None]), 0, top).astype(np.uint8)
    return d, dmin, sc, mins, q


def _pack_q4_k_scales(sc: np.ndarray, mins: np.ndarray) -> np.ndarray:
    scales = np.empty((sc.shape[0], 12), dtype=np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return scales


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.reshape(-1, 1).view(np.uint8)


def _quantize_q4_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    d, dmin, sc, mins, q = _affine_blocks(blocks, 32, 15, 63)
    q = q.reshape(n_blocks, 4, 2, 32)  # run j: sub-block 2j in the low nibbles, 2j+1 in the high
    nibbles = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n_blocks, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_q4_k_scales(sc, mins), nibbles], axis=1)


def _quantize_q5_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    d, dmin, sc, mins, q = _affine_blocks(blocks, 32, 31, 63)
    low = (q & 0x0F).reshape(n_blocks, 4, 2, 32)
    nibbles = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(n_blocks, 128)
    # bit 4 of weight 32s + l is bit s of qh[l]
    qh = np.bitwise_or.reduce((q >> 4).reshape(n_blocks, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_q4_k_scales(sc, mins), qh, nibbles], axis=1)


def _pack_two_bits(q: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K low bits: weight 128h + 32j + l in bits 2j..2j+1 of byte 32h + l."""
    q = (q & 3).reshape(q.shape[0], 2, 4, 32)
    return np.bitwise_or.reduce(q << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None], axis=2).reshape(-1, 64)


def _quantize_q2_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    d, dmin, sc, mins, q = _affine_blocks(blocks, 16, 3, 15)
    return np.concatenate([sc | (mins << 4), _pack_two_bits(q.reshape(n_blocks, 256)),
                           _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _fit_symmetric(x: np.ndarray, half: int = 32) -> np.ndarray:
    """Best a over the candidate steps for x ≈ a·q, q in −half..half−1, per row of x."""
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    best_err = np.full(x.shape[0], np.inf, dtype=np.float32)
    best_a = np.zeros(x.shape[0], dtype=np.float32)
    for offset in Q6_K_STEP_OFFSETS:
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = np.where(peak != 0, -np.float32(half + offset * half / 32) / peak, 0).astype(np.float32)
        q = np.clip(np.rint(x * inverse[:, None]), -half, half - 1)
        sum_qq = (q * q).sum(axis=-1)
        a = np.where(sum_qq > 0, (q * x).sum(axis=-1) / np.where(sum_qq > 0, sum_qq, 1), 0)
        err = np.square(a[:, None] * q - x).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_a = np.where(better, a, best_a)
    return best_a


def _quantize_q6_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    groups = blocks.reshape(-1, 16)
    a = _fit_symmetric(groups).reshape(n_blocks, 16)
    d = _f16(np.abs(a).max(axis=-1) / 127)
    sc = np.clip(np.rint(a * _safe_inverse(d.astype(np.float32))[:, None]), -128, 127).astype(np.int8)
    step = (d.astype(np.float32)[:, None] * sc).reshape(-1)
    with np.errstate(divide="ignore"):
        inverse = np.where(step != 0, 1 / np.where(step != 0, step, 1), 0).astype(np.float32)
    q = (np.clip(np.rint(groups * inverse[:, None]), -32, 31) + 32).astype(np.uint8)

    q = q.reshape(n_blocks, 2, 4, 32)  # half h, quarter k: weights 128h + 32k .. +31
    low = q & 0x0F
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    high = q >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return np.concatenate([ql.reshape(n_blocks, 128), qh.reshape(n_blocks, 64), sc.view(np.uint8),
                           d.reshape(-1, 1).view(np.uint8)], axis=1)


def _quantize_q3_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    groups = blocks.reshape(-1, 16)
    a = _fit_symmetric(groups, 4).reshape(n_blocks, 16)
    d = _f16(np.abs(a).max(axis=-1) / 31)
    sc = np.clip(np.rint(a * _safe_inverse(d.astype(np.float32))[:, None]), -32, 31).astype(np.int8)
    step = (d.astype(np.float32)[:, None] * sc).reshape(-1)
    with np.errstate(divide="ignore"):
        inverse = np.where(step != 0, 1 / np.where(step != 0, step, 1), 0).astype(np.float32)
    q = (np.clip(np.rint(groups * inverse[:, None]), -4, 3) + 4).astype(np.uint8).reshape(n_blocks, 256)
    # bit 2 of weight 32k + l is bit k of hmask[l]
    hmask = np.bitwise_or.reduce((q >> 2).reshape(n_blocks, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    s = (sc.astype(np.int16) + 32).astype(np.uint8)  # 0..63
    scales = np.empty((n_blocks, 12), dtype=np.uint8)
    scales[:, 0:8] = (s[:, 0:8] & 0x0F) | ((s[:, 8:16] & 0x0F) << 4)
    high = (s >> 4).reshape(n_blocks, 4, 4)  # s[4k + j]: bits 2k..2k+1 of byte 8 + j
    scales[:, 8:12] = np.bitwise_or.reduce(high << (2 * np.arange(4, dtype=np.uint8))[None, :, None], axis=1)
    return np.concatenate([hmask, _pack_two_bits(q), scales, _f16_bytes(d)], axis=1)


# IQ4_NL's and IQ4_XS's non-uniform 4-bit grid (ggml's kvalues_iq4nl).
IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def _signed_inverse(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(values != 0, 1 / np.where(values != 0, values, 1), 0).astype(np.float32)


def _iq4_nibbles(sub: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Rows of 32 weights as 16 bytes of grid indices (low nibbles 0-15, high 16-31)."""
    scaled = sub * _signed_inverse(step)[:, None]
    q = np.abs(scaled[..., None] - IQ4_GRID).argmin(axis=-1).astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _grid_step(sub: np.ndarray) -> np.ndarray:
    """Per row: the step that puts the weight of largest magnitude on the grid's −127."""
    peak = np.take_along_axis(sub, np.abs(sub).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    return peak / np.float32(-127)


def _quantize_iq4_nl_blocks(blocks: np.ndarray) -> np.ndarray:
    d = _f16(_grid_step(blocks))
    return np.concatenate([_f16_bytes(d), _iq4_nibbles(blocks, d.astype(np.float32))], axis=1)


def _quantize_iq4_xs_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    sub = blocks.reshape(-1, 32)
    a = _grid_step(sub).reshape(n_blocks, 8)
    d = _f16(np.abs(a).max(axis=-1) / 31)
    ls = np.clip(np.rint(a * _safe_inverse(d.astype(np.float32))[:, None]), -32, 31)
    step = (d.astype(np.float32)[:, None] * ls).reshape(-1)
    s = (ls + 32).astype(np.uint16)   # 0..63
    scales_h = np.bitwise_or.reduce((s >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype(np.uint16)
    low = (s & 0x0F).astype(np.uint8).reshape(n_blocks, 4, 2)
    scales_l = low[:, :, 0] | (low[:, :, 1] << 4)
    qs = _iq4_nibbles(sub, step).reshape(n_blocks, 128)
    return np.concatenate([_f16_bytes(d), scales_h.reshape(-1, 1).view(np.uint8), scales_l, qs], axis=1)


# The types quantized here (the others by gguf): weights per block, quantizer of (blocks, weights).
_OWN_QUANTIZERS = {"Q2_K": (QK_K, _quantize_q2_k_blocks), "Q3_K": (QK_K, _quantize_q3_k_blocks),
                   "Q4_K": (QK_K, _quantize_q4_k_blocks), "Q5_K": (QK_K, _quantize_q5_k_blocks),
                   "Q6_K": (QK_K, _quantize_q6_k_blocks), "IQ4_NL": (32, _quantize_iq4_nl_blocks),
                   "IQ4_XS": (QK_K, _quantize_iq4_xs_blocks)}

