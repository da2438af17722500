"""GGUF weight quantization in numpy, for synthetic models and kernel tests.

gguf 0.19 reads every GGML type but quantizes only some: its own quantizers are used for Q8_0
(bit-exact with ggml's), F16 and BF16; Q4_K and Q6_K, which it cannot write, are quantized here,
vectorised over blocks. The bytes are ggml's block layouts (kernels/quant.h), so
`gguf.quants.dequantize` and the engine both read them.

How the K-quant scales are chosen (plain least squares, no importance matrix):

* Q4_K, each sub-block of 32 weights is w ≈ a·q − m with q in 0..15 and m ≥ 0. A few step
  sizes around (max − min)/15 are tried; for each the weights are rounded and (a, m) refitted
  by least squares; the candidate with the smallest squared error wins. The 8 scales and
  8 mins of a super-block are then stored as 6-bit multiples of two f16 super-scales
  (largest / 63), and the weights are rounded once more against the scales as stored.
* Q6_K, each group of 16 is w ≈ a·q with q in −32..31. Step sizes around the one that maps
  the weight of largest magnitude to −32 (the longer side of the range) are tried, with a
  least-squares refit of a; the 16 scales are then stored as int8 multiples of one f16
  super-scale (largest |a| / 127) and the weights rounded against them.

Trying a handful of steps and refitting recovers most of what ggml's longer searches gain over
plain min/max rounding, at a cost that keeps 50 M weights within a few seconds.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

TYPE_NAMES = ("F32", "F16", "BF16", "Q8_0", "Q4_K", "Q6_K")

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
    """GGUF bytes of a float matrix: uint8 of shape (rows, row_bytes), rows over all leading axes."""
    weights = np.asarray(weights, dtype=np.float32)
    n = weights.shape[-1] if weights.ndim else 0
    nbytes = row_bytes(type_name, n)
    rows = weights.reshape(-1, n)
    if type_name == "Q4_K":
        blocks = _by_chunks(rows.reshape(-1, QK_K), _quantize_q4_k_blocks)
    elif type_name == "Q6_K":
        blocks = _by_chunks(rows.reshape(-1, QK_K), _quantize_q6_k_blocks)
    else:
        blocks = gguf_quants.quantize(rows, ggml_type(type_name))
    return np.ascontiguousarray(blocks).view(np.uint8).reshape(rows.shape[0], nbytes)


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


def _fit_affine(x: np.ndarray, lo: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best (a, m ≥ 0) over the candidate steps for x ≈ a·q − m, q in 0..15, per row of x."""
    count = x.shape[-1]
    sum_x = x.sum(axis=-1)
    best_err = np.full(x.shape[0], np.inf, dtype=np.float32)
    best_a = np.zeros(x.shape[0], dtype=np.float32)
    best_m = np.zeros(x.shape[0], dtype=np.float32)
    shifted = x - lo[:, None]
    for offset in Q4_K_STEP_OFFSETS:
        inverse = _safe_inverse(span / np.float32(15 + offset))
        q = np.clip(np.rint(shifted * inverse[:, None]), 0, 15)
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


def _six_bit(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values (blocks, 8) ≥ 0 as f16 super-scale (blocks,) times 6-bit integers."""
    scale = _f16(values.max(axis=-1) / 63)
    levels = np.clip(np.rint(values * _safe_inverse(scale.astype(np.float32))[:, None]), 0, 63)
    return scale, levels.astype(np.uint8)


def _quantize_q4_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = blocks.shape[0]
    sub = blocks.reshape(-1, 32)
    lo = np.minimum(sub.min(axis=-1), 0)
    a, m = _fit_affine(sub, lo, sub.max(axis=-1) - lo)
    d, sc = _six_bit(a.reshape(n_blocks, 8))
    dmin, mins = _six_bit(m.reshape(n_blocks, 8))
    step = (d.astype(np.float32)[:, None] * sc).reshape(-1)
    offset = (dmin.astype(np.float32)[:, None] * mins).reshape(-1)
    q = np.clip(np.rint((sub + offset[:, None]) * _safe_inverse(step)[:, None]), 0, 15).astype(np.uint8)

    q = q.reshape(n_blocks, 4, 2, 32)  # run j: sub-block 2j in the low nibbles, 2j+1 in the high
    nibbles = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n_blocks, 128)
    scales = np.empty((n_blocks, 12), dtype=np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8),
                           scales, nibbles], axis=1)


def _fit_symmetric(x: np.ndarray) -> np.ndarray:
    """Best a over the candidate steps for x ≈ a·q, q in −32..31, per row of x."""
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    best_err = np.full(x.shape[0], np.inf, dtype=np.float32)
    best_a = np.zeros(x.shape[0], dtype=np.float32)
    for offset in Q6_K_STEP_OFFSETS:
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = np.where(peak != 0, -np.float32(32 + offset) / peak, 0).astype(np.float32)
        q = np.clip(np.rint(x * inverse[:, None]), -32, 31)
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
