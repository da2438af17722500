"""Row kernels (kernels/quant*.cpp, kernels/dot_*.cpp) and numatune.quants, against numpy and gguf.

Every test that runs a kernel runs it for every variant this CPU supports. The AVX-512 code also
runs, under emulation, on CPUs without AVX-512 (SIMDe, when its headers are installed).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from numatune import _kernels, quants

VARIANTS = _kernels.quant_variants()
ROWS = 9  # the float kernels take rows four at a time: 9 exercises both paths
# The codebook types and MXFP4 (kernels/quant_iq.*, kernels/dot_x86_iq.h).
IQ_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ3_S", "MXFP4")
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS") + IQ_TYPES[:-1]
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4")
Q8_0_ACTIVATION = ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4")
QUANTIZED = K_QUANTS + LEGACY
SHAPES = {
    **{type_name: (256, 512, 768) for type_name in K_QUANTS},
    **{type_name: (32, 96, 224) for type_name in LEGACY},   # multiples of 32, not of 256
    "F32": (1, 100, 129),
    "F16": (1, 100, 129),
    "BF16": (1, 100, 129),
}
CASES = [(type_name, n) for type_name, sizes in SHAPES.items() for n in sizes]
FLOATS = ("F32", "F16", "BF16")
# Random bytes are valid blocks of a quantized type only: float rows come from the quantizer.
SOURCED_CASES = [(source, type_name, n) for source in ("random bytes", "quantized normal")
                 for type_name, n in CASES if not (source == "random bytes" and type_name in FLOATS)]
FLOAT_SLACK = 1e-5  # relative to Σ|w·x|: float rounding of per-block sums, in any order
KERNELS_SOURCE = Path(__file__).resolve().parent.parent / "kernels"


def block(type_name: str) -> tuple[int, int]:
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


# Byte offsets of a block's f16 scales (d, and dmin or m), set to sane values in random blocks.
SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
                 "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
                 "IQ4_XS": (0,), "IQ1_S": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ1_M": (),
                 "IQ3_XXS": (0,), "IQ2_S": (0,), "IQ3_S": (0,), "MXFP4": ()}
SIGNED_SCALES = ("Q4_1", "Q5_1", "IQ3_XXS", "IQ2_S", "IQ3_S")   # m, or d, of either sign


def f16_scales(shape: tuple[int, ...], rng: np.random.Generator, scales: str, signed: bool) -> np.ndarray:
    """f16 bit patterns: "sane" in [1e-3, 1e-2] (either sign if signed); "any" every finite f16,
    subnormal and negative included."""
    if scales == "any":
        d = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
        d[(d & 0x7c00) == 0x7c00] &= 0x83ff          # inf/nan → a subnormal of the same sign
        return d
    d = rng.uniform(1e-3, 1e-2, size=shape)
    if signed:
        d *= rng.choice([-1, 1], size=shape)
    return d.astype(np.float16).view(np.uint16)


def random_blocks(type_name: str, rows: int, n: int, rng: np.random.Generator, scales: str = "sane") -> np.ndarray:
    """Random bytes with sane f16 scales: every nibble, 6-bit value and scale sign occurs. The
    scales are as f16_scales says; MXFP4's E8M0 exponent is 110..140 ("sane": 12·2^(e − 128) stays
    well within float), or any of 0..255."""
    weights, nbytes = block(type_name)
    blocks = rng.integers(0, 256, size=(rows, n // weights, nbytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[type_name]:
        d = f16_scales(blocks.shape[:2], rng, scales, type_name in SIGNED_SCALES)
        blocks[..., offset:offset + 2] = d.view(np.uint8).reshape(*blocks.shape[:2], 2)
    if type_name == "MXFP4" and scales == "sane":
        blocks[..., 0] = rng.integers(110, 141, size=blocks.shape[:2])
    if type_name == "IQ1_M":   # d is the top nibbles of the four 16-bit scale words (bytes 48-55)
        d = f16_scales(blocks.shape[:2], rng, scales, False)
        words = blocks[..., 48:56].copy().view(np.uint16)
        for k in range(4):
            words[..., k] = (words[..., k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
        blocks[..., 48:56] = words.view(np.uint8)
    return blocks.reshape(rows, -1)


def weights_for(type_name: str, n: int, rng: np.random.Generator, source: str) -> np.ndarray:
    if source == "random bytes":
        return random_blocks(type_name, ROWS, n, rng)
    return quants.synthetic(rng.standard_normal((ROWS, n)).astype(np.float32), type_name, rng)


def decode_activation(type_name: str, data: np.ndarray, n: int) -> np.ndarray:
    """The activation the kernels really dot with, decoded from quantize_activation's bytes."""
    if type_name in FLOATS:
        return data.view(np.float32).astype(np.float64)
    if type_name in Q8_0_ACTIVATION:   # Q8_0: f16 d, 32 int8
        blocks = data.reshape(n // 32, 34)
        return (blocks[:, :2].copy().view(np.float16).astype(np.float64)
                * blocks[:, 2:].view(np.int8).astype(np.float64)).reshape(-1)
    if type_name in ("Q4_1", "Q5_1"):           # Q8_1: f16 d, int16 Σ qs, 32 int8
        blocks = data.reshape(n // 32, 36)
        qs = blocks[:, 4:].view(np.int8)
        assert np.array_equal(blocks[:, 2:4].copy().view(np.int16)[:, 0], qs.sum(axis=-1, dtype=np.int64)), "sums"
        return (blocks[:, :2].copy().view(np.float16).astype(np.float64) * qs.astype(np.float64)).reshape(-1)
    blocks = data.reshape(n // 256, 292)  # Q8_K: f32 d, 256 int8, 16 int16 sums
    d = blocks[:, :4].copy().view(np.float32).astype(np.float64)
    qs = blocks[:, 4:260].view(np.int8)
    bsums = blocks[:, 260:].copy().view(np.int16)
    assert np.array_equal(bsums, qs.reshape(-1, 16, 16).sum(axis=-1, dtype=np.int64)), "bsums"
    return (d * qs.astype(np.float64)).reshape(-1)


def activation_half_step(type_name: str, x: np.ndarray) -> np.ndarray:
    """Half the quantization step of each element of x: the bound of its rounding error."""
    if type_name in FLOATS:
        return np.zeros_like(x, dtype=np.float64)
    legacy = type_name in LEGACY
    size = 32 if legacy else 256
    amax = np.abs(x.astype(np.float64)).reshape(-1, size).max(axis=-1)
    # Q8_0 and Q8_1 store their scale in f16: allow for that rounding too.
    step = amax / 127 * (1 + 2 ** -10 if legacy else 1 + 1e-6)
    return np.repeat(step / 2, size)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


# ---- kernels against numpy


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source, type_name, n", SOURCED_CASES)
def test_gemv_matches_numpy(variant, source, type_name, n, rng):
    weights = weights_for(type_name, n, rng, source)
    w = quants.dequantize(weights, type_name).astype(np.float64)
    x = rng.standard_normal(n).astype(np.float32)
    x[n // 2] = 9.0  # one large value, as real activations have

    y = _kernels.gemv(type_name, weights, x, isa=variant)

    xq = decode_activation(type_name, _kernels.quantize_activation(type_name, x, isa=variant), n)
    magnitude = np.abs(w) @ np.abs(xq)
    # Exact integer sums: only the float rounding of the per-block scaling remains.
    np.testing.assert_array_less(np.abs(y - w @ xq), FLOAT_SLACK * magnitude + 1e-30)
    # Against the float activation: within what quantizing x can change.
    bound = np.abs(w) @ activation_half_step(type_name, x) + FLOAT_SLACK * magnitude + 1e-30
    np.testing.assert_array_less(np.abs(y - w @ x.astype(np.float64)), bound)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name, n", CASES)
def test_variant_matches_scalar(variant, type_name, n, rng):
    weights = (random_blocks(type_name, ROWS, n, rng) if type_name in QUANTIZED
               else weights_for(type_name, n, rng, "quantized normal"))
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    activation = _kernels.quantize_activation(type_name, x, isa=variant)
    assert activation.tobytes() == _kernels.quantize_activation(type_name, x, isa="scalar").tobytes()

    y = _kernels.gemv(type_name, weights, x, isa=variant)
    y_scalar = _kernels.gemv(type_name, weights, x, isa="scalar")
    magnitude = np.abs(quants.dequantize(weights, type_name)).astype(np.float64) @ np.abs(
        decode_activation(type_name, activation, n))
    np.testing.assert_array_less(np.abs(y - y_scalar), FLOAT_SLACK * magnitude + 1e-30)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name", QUANTIZED)
def test_activation_edge_cases_match_scalar(variant, type_name):
    n = 512
    ties = (np.arange(n) % 255 - 127).astype(np.float32) / 2  # many x·127/amax land on .5
    tiny = np.full(n, 1e-41, dtype=np.float32)                 # 127/amax overflows: zero blocks
    for x in (np.zeros(n, np.float32), ties, tiny, -ties):
        ours = _kernels.quantize_activation(type_name, x, isa=variant).tobytes()
        assert ours == _kernels.quantize_activation(type_name, x, isa="scalar").tobytes()
    zero = np.zeros((3, quants.row_bytes(type_name, n)), np.uint8)
    assert np.array_equal(_kernels.gemv(type_name, zero, ties, isa=variant), np.zeros(3))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name", ["Q4_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"])
def test_alternating_activations_each_give_their_own_result(variant, type_name, rng):
    """The AVX-512 kernels keep the last activation's layout per thread: a different activation
    (often in the same freed buffer) must not be dotted with a stale one."""
    n = 512
    weights = random_blocks(type_name, ROWS, n, rng)
    a = rng.standard_normal(n).astype(np.float32)
    b = a.copy()
    b[7] += 1.0  # differs in one block only
    expected = {key: _kernels.gemv(type_name, weights, x, isa="scalar") for key, x in (("a", a), ("b", b))}
    assert not np.array_equal(expected["a"], expected["b"])
    for key, x in (("a", a), ("b", b), ("a", a), ("a", a), ("b", b)):
        y = _kernels.gemv(type_name, weights, x, isa=variant)
        np.testing.assert_allclose(y, expected[key], rtol=1e-4, atol=1e-4 * np.abs(expected[key]).max())
        other = expected["b" if key == "a" else "a"]
        assert np.abs(y - expected[key]).max() < np.abs(y - other).max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_activation_dotted_with_types_of_one_activation_format(variant, rng):
    """Q4_0, Q5_0, IQ4_NL and Q8_0 rows all take the same Q8_0 activation bytes, which the AVX-512
    kernels lay out per type (each with its own offset): one activation going from type to type
    and back must meet each type's own layout."""
    n = 224
    x = rng.standard_normal(n).astype(np.float32)
    weights = {t: random_blocks(t, ROWS, n, rng) for t in ("Q4_0", "Q5_0", "IQ4_NL", "Q8_0")}
    expected = {t: _kernels.gemv(t, w, x, isa="scalar") for t, w in weights.items()}
    for type_name in ("Q4_0", "Q5_0", "IQ4_NL", "Q8_0", "Q5_0", "Q4_0", "IQ4_NL"):
        y = _kernels.gemv(type_name, weights[type_name], x, isa=variant)
        np.testing.assert_allclose(y, expected[type_name], rtol=1e-4, atol=1e-4 * np.abs(expected[type_name]).max())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name", QUANTIZED)
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(variant, type_name, rng):
    """The kernels read row r together with row r + rows/2 and reduce sums several rows at a time;
    the engine splits rows over workers at arbitrary points, so every row's value must be the
    same bits as when it is dotted alone. 21 rows cover every path: groups of 4 + 4, single
    pairs, and the odd row left over."""
    n = 512
    weights = random_blocks(type_name, 21, n, rng)
    x = rng.standard_normal(n).astype(np.float32)
    alone = np.array([_kernels.gemv(type_name, weights[r:r + 1], x, isa=variant)[0] for r in range(21)])
    for first, count in ((0, 21), (0, 8), (3, 10), (5, 13), (20, 1), (1, 2), (2, 3)):
        together = _kernels.gemv(type_name, weights[first:first + count], x, isa=variant)
        assert together.tobytes() == alone[first:first + count].tobytes(), (first, count)


def test_rows_may_be_strided_views(rng):
    weights = random_blocks("Q4_K", 12, 512, rng)
    x = rng.standard_normal(512).astype(np.float32)
    every_third = weights[::3]
    assert not every_third.flags.c_contiguous
    assert np.array_equal(_kernels.gemv("Q4_K", every_third, x),
                          _kernels.gemv("Q4_K", np.ascontiguousarray(every_third), x))


def test_active_variant_follows_set_active_isa(rng):
    weights = random_blocks("Q6_K", ROWS, 512, rng)
    x = rng.standard_normal(512).astype(np.float32)
    previous = _kernels.active_isa()
    try:
        for isa in _kernels.supported_isas():
            _kernels.set_active_isa(isa)
            assert np.array_equal(_kernels.gemv("Q6_K", weights, x), _kernels.gemv("Q6_K", weights, x, isa=isa))
    finally:
        _kernels.set_active_isa(previous)


# ---- quantizers and the scalar dequantizer against gguf

# Relative RMS error on N(0, 1) weights; measured Q2_K 0.27, Q3_K 0.15, Q4_K 0.072, Q5_K 0.036,
# Q6_K 0.017, Q4_0 0.086, Q4_1 0.078, Q5_0 0.043, Q5_1 0.038, Q8_0 0.0054, IQ4_NL 0.080,
# IQ4_XS 0.080, BF16 0.0017, F16 0.00021.
RMS_BOUNDS = {"Q2_K": 0.3, "Q3_K": 0.17, "Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02,
              "Q4_0": 0.095, "Q4_1": 0.085, "Q5_0": 0.047, "Q5_1": 0.042, "Q8_0": 0.006,
              "IQ4_NL": 0.09, "IQ4_XS": 0.09,
              "BF16": 0.002, "F16": 0.0003}


@pytest.mark.parametrize("type_name", sorted(RMS_BOUNDS))
def test_quantizer_round_trip(type_name, rng):
    weights = rng.standard_normal((16, 1024)).astype(np.float32)
    weights[3] *= 40           # rows of very different scale
    weights[5, :32] = 0.0      # an all-zero (sub-)block
    weights[6, 256:512] = 0.5  # a constant super-block
    data = quants.quantize(weights, type_name)
    assert data.dtype == np.uint8 and data.shape == (16, quants.row_bytes(type_name, 1024))
    back = gguf_quants.dequantize(data, GGMLQuantizationType[type_name])
    row_rms = np.sqrt(np.mean(weights ** 2, axis=1, keepdims=True))
    relative = np.sqrt(np.mean(((back - weights) / row_rms) ** 2))
    assert relative < RMS_BOUNDS[type_name]
    assert np.all(back[5, :32] == 0)
    np.testing.assert_allclose(back[6, 256:512], 0.5, rtol=0.02)


@pytest.mark.parametrize("type_name", quants.RANDOM_BLOCK_TYPES)
def test_random_block_types_are_written_as_random_blocks_of_the_weights_scale(type_name, rng):
    """No quantizer writes the IQ1/IQ2/IQ3 lattice types: quantize refuses them, and synthetic models get
    random valid blocks whose root-mean-square follows each block's weights."""
    with pytest.raises(ValueError, match=f"{type_name}: no quantizer"):
        quants.quantize(np.ones((1, 256), np.float32), type_name)
    weights = rng.standard_normal((64, 512)).astype(np.float32)
    weights[1] *= 50            # a row of much larger weights
    weights[2, :256] = 0.0      # an all-zero block
    data = quants.synthetic(weights, type_name, rng)
    assert data.dtype == np.uint8 and data.shape == (64, quants.row_bytes(type_name, 512))
    back = gguf_quants.dequantize(data, GGMLQuantizationType[type_name]).reshape(-1, 256)
    assert np.all(np.isfinite(back)) and np.all(back[4] == 0)
    ratio = np.sqrt(np.mean(back ** 2)) / np.sqrt(np.mean(weights.reshape(-1, 256) ** 2))
    assert 0.7 < ratio < 1.4
    row_rms = np.sqrt(np.mean(back.reshape(64, -1) ** 2, axis=1))
    assert 20 < row_rms[1] / np.median(row_rms) < 120
    assert not np.array_equal(data[0], quants.synthetic(weights, type_name, rng)[0])   # random, not fitted


def test_k_quant_error_beats_plain_min_max_rounding(rng):
    # The step search must do at least as well as rounding against the range alone.
    weights = rng.standard_normal((8, 2048)).astype(np.float32)
    searched = quants.dequantize(quants.quantize(weights, "Q4_K"), "Q4_K")
    original = quants.Q4_K_STEP_OFFSETS
    try:
        quants.Q4_K_STEP_OFFSETS = (0.0,)
        plain = quants.dequantize(quants.quantize(weights, "Q4_K"), "Q4_K")
    finally:
        quants.Q4_K_STEP_OFFSETS = original
    assert np.mean((searched - weights) ** 2) < np.mean((plain - weights) ** 2)


@pytest.mark.parametrize("type_name, n", [(t, max(SHAPES[t])) for t in SHAPES])
def test_scalar_dequantize_equals_gguf_exactly(type_name, n, rng):
    sources = [weights_for(type_name, n, rng, "quantized normal")]
    if type_name in QUANTIZED:
        sources.append(random_blocks(type_name, ROWS, n, rng))
    for data in sources:
        ours = np.stack([_kernels.dequantize_row(type_name, row.tobytes()) for row in data])
        theirs = gguf_quants.dequantize(data, GGMLQuantizationType[type_name])
        assert np.array_equal(ours.view(np.uint32), theirs.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("type_name", IQ_TYPES)
def test_scalar_dequantize_equals_gguf_for_any_scale(type_name, rng):
    """Every finite f16 d, subnormal and negative ones included (MXFP4: every exponent)."""
    data = random_blocks(type_name, 16, 2048, rng, scales="any")
    ours = np.stack([_kernels.dequantize_row(type_name, row.tobytes()) for row in data])
    with np.errstate(over="ignore"):   # MXFP4: 12·2^(e − 128) overflows to inf for e > 252, in both
        theirs = np.asarray(gguf_quants.dequantize(data, GGMLQuantizationType[type_name]), np.float32)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_each_sign_bit_and_high_index_bit_reaches_its_weight(rng):
    """A change of one sign bit negates exactly its weight; one high index bit (IQ3_S qh, IQ2_S qh)
    changes exactly its group's weights; IQ3_XXS's scale nibble rescales exactly its 32 weights."""
    def decoded(type_name, block):
        return _kernels.dequantize_row(type_name, block.tobytes())
    iq3s = random_blocks("IQ3_S", 1, 256, rng)[0]
    signs = 2 + 64 + 8                                   # d, qs, qh
    flipped = iq3s.copy()
    flipped[signs + 5] ^= 1 << 3                         # bit 3 of sign byte 5: weight 43
    a, b = decoded("IQ3_S", iq3s), decoded("IQ3_S", flipped)
    assert np.flatnonzero(a != b).tolist() == [43] and b[43] == -a[43]
    high = iq3s.copy()
    high[2 + 64 + 2] ^= 1 << 6                           # qh[2] bit 6: index 6 of sub-block 2, weights 88..91
    changed = np.flatnonzero(decoded("IQ3_S", high) != a)   # entries may share a value at a place
    assert set(changed.tolist()) <= set(range(88, 92)) and changed.size > 0
    iq2s = random_blocks("IQ2_S", 1, 256, rng)[0]
    high = iq2s.copy()
    high[2 + 32 + 32 + 1] ^= 0b11 << 4                   # qh[1] bits 4-5: index 2 of pair 1, weights 48..55
    changed = np.flatnonzero(decoded("IQ2_S", high) != decoded("IQ2_S", iq2s))
    assert set(changed.tolist()) <= set(range(48, 56)) and changed.size > 0
    iq3xxs = random_blocks("IQ3_XXS", 1, 256, rng)[0]
    rescaled = iq3xxs.copy()
    rescaled[2 + 64 + 4 * 3 + 3] ^= 0x10                 # scale nibble of sub-block 3
    changed = np.flatnonzero(decoded("IQ3_XXS", rescaled) != decoded("IQ3_XXS", iq3xxs))
    assert changed.tolist() == list(range(96, 128))


# Bytes after d that make every weight of a block its largest magnitude with the largest scale
# (IQ3_XXS: grid entry 255, scale 15, sign index 127; IQ3_S: index 511, all signs, scales 15;
# IQ2_S: index 1023; MXFP4: −12 everywhere).
EXTREME_BLOCKS = {"IQ3_XXS": 2, "IQ3_S": 2, "IQ2_S": 2, "MXFP4": 1}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name", EXTREME_BLOCKS)
def test_extreme_blocks(variant, type_name, rng):
    """Largest magnitudes with the largest scale against ±127 activations (the integer sums'
    worst case), all-negative signs, and zero weights."""
    n = 512
    blocks = random_blocks(type_name, 4, n, rng).reshape(4, n // block(type_name)[0], -1)
    blocks[0, :, EXTREME_BLOCKS[type_name]:] = 0xff
    blocks[1] = 0
    weights = blocks.reshape(4, -1)
    x = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    y = _kernels.gemv(type_name, weights, x, isa=variant)
    w = quants.dequantize(weights, type_name).astype(np.float64)
    xq = decode_activation(type_name, _kernels.quantize_activation(type_name, x, isa=variant), n)
    assert np.all(np.abs(xq) > 0.99) and y[1] == 0
    np.testing.assert_array_less(np.abs(y - w @ xq), FLOAT_SLACK * (np.abs(w) @ np.abs(xq)) + 1e-30)


def test_mxfp4_is_quantized_by_gguf(rng):
    weights = rng.standard_normal((8, 1024)).astype(np.float32)
    data = quants.quantize(weights, "MXFP4")
    back = quants.dequantize(data, "MXFP4")
    # measured 0.10 relative RMS error on N(0, 1) (E2M1 values, power-of-two scales)
    assert np.sqrt(np.mean((back - weights) ** 2)) < 0.12
    assert np.array_equal(data, gguf_quants.quantize(weights, GGMLQuantizationType.MXFP4).view(np.uint8))


def test_quantizer_speed_is_vectorised(rng):
    import time
    weights = rng.standard_normal((256, 7168)).astype(np.float32)  # 1.8 M weights
    start = time.perf_counter()
    quants.quantize(weights, "Q4_K")
    assert time.perf_counter() - start < 2.0  # ~0.12 s here; a per-block Python loop takes minutes


# ---- errors


def test_unknown_type_names_the_type(rng):
    with pytest.raises(ValueError, match=r"unknown weight type 'TQ2_0'.*Q4_K"):
        _kernels.gemv("TQ2_0", np.zeros((1, 66), np.uint8), np.zeros(256, np.float32))
    with pytest.raises(ValueError, match="TQ2_0"):
        quants.quantize(np.zeros((1, 256), np.float32), "TQ2_0")


def test_the_type_tables_agree():
    """The kernels, the quantizer and the GGUF reader accept the same types."""
    from numatune.gguf_moe import SUPPORTED_TYPES
    assert set(_kernels.supported_types()) == set(quants.TYPE_NAMES) == set(SUPPORTED_TYPES)
    for name, number in SUPPORTED_TYPES.items():
        assert GGMLQuantizationType[name] == number


def test_row_length_not_a_whole_number_of_blocks():
    with pytest.raises(ValueError, match=r"Q4_K: a row of 300 weights is not a positive multiple of the block size 256"):
        _kernels.quantize_activation("Q4_K", np.zeros(300, np.float32))
    with pytest.raises(ValueError, match=r"Q8_0: 100 bytes are not a positive whole number of 34-byte blocks"):
        _kernels.dequantize_row("Q8_0", bytes(100))
    with pytest.raises(ValueError, match=r"Q6_K: 300 bytes .* 210-byte blocks"):
        _kernels.gemv("Q6_K", np.zeros((2, 300), np.uint8), np.zeros(256, np.float32))
    with pytest.raises(ValueError, match=r"Q4_K: a row of 100 weights .* block size 256"):
        quants.quantize(np.zeros((2, 100), np.float32), "Q4_K")


def test_shape_dtype_and_alignment_errors():
    with pytest.raises(ValueError, match=r"Q4_K: rows of 144 bytes hold 256 weights but x has 512"):
        _kernels.gemv("Q4_K", np.zeros((3, 144), np.uint8), np.zeros(512, np.float32))
    with pytest.raises(ValueError, match=r"Q8_0: weights must be a 2-D uint8 array"):
        _kernels.gemv("Q8_0", np.zeros((3, 34), np.int8), np.zeros(32, np.float32))
    with pytest.raises(ValueError, match=r"Q8_0: weights must be a 2-D uint8 array"):
        _kernels.gemv("Q8_0", np.zeros(34, np.uint8), np.zeros(32, np.float32))
    with pytest.raises(ValueError, match=r"F32: weight rows must start at 4-byte aligned"):
        _kernels.gemv("F32", np.zeros(4 * 8 + 1, np.uint8)[1:].reshape(1, 32), np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"unknown ISA variant 'sse9'"):
        _kernels.gemv("F32", np.zeros((1, 4), np.uint8), np.zeros(1, np.float32), isa="sse9")


def run_with_isa(isa: str) -> subprocess.CompletedProcess:
    child = ("import sys, numpy as np\n"
             "from numatune import _kernels\n"
             "try:\n"
             "    y = _kernels.gemv('Q8_0', np.zeros((2, 34), np.uint8), np.ones(32, np.float32))\n"
             "except ValueError as error:\n"
             "    print(error); sys.exit(3)\n"
             "print(_kernels.active_isa(), y.tolist())\n")
    env = dict(os.environ, NUMATUNE_ISA=isa)
    # Run outside the checkout: `python -c` puts the current directory first on sys.path, and the
    # source tree's numatune/ has no compiled _kernels.
    return subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tempfile.gettempdir())


def test_forcing_an_isa_the_cpu_lacks_is_a_clean_error():
    done = run_with_isa("avx512")
    if "avx512" in _kernels.supported_isas():
        assert done.returncode == 0 and done.stdout.startswith("avx512 [0.0, 0.0]"), done.stderr
    else:
        assert done.returncode == 3, done.stderr
        assert done.stdout.strip() == "NUMATUNE_ISA=avx512: this CPU or build cannot run that variant"
    bogus = run_with_isa("avx9000")
    assert bogus.returncode == 3 and "unknown ISA variant 'avx9000'" in bogus.stdout


# ---- the AVX-512 variant under emulation


EMULATION_HEADER = """\
// <immintrin.h> for this test: the real one, then SIMDe's AVX-512 in place of the instructions.
#pragma once
#include_next <immintrin.h>
#include <cstring>
#include <simde/x86/avx512.h>
#define __m512i simde__m512i
#define __m512 simde__m512
#define __m512bh simde__m512bh
{aliases}
// What SIMDe 0.7 lacks, from Intel's descriptions of the instructions.
static inline float emu_f32(const simde__m512& v, int i) {{ return simde__m512_to_private(v).f32[i]; }}
static inline simde__m512 emu_from_f32(const float* f) {{
  simde__m512_private r; for (int i = 0; i < 16; ++i) r.f32[i] = f[i]; return simde__m512_from_private(r); }}
static inline simde__m512i emu_from_i32(const int* v) {{
  simde__m512i_private r; for (int i = 0; i < 16; ++i) r.i32[i] = v[i]; return simde__m512i_from_private(r); }}
static inline simde__m512 emu_cvtepi32_ps(simde__m512i v) {{
  float f[16]; for (int i = 0; i < 16; ++i) f[i] = (float)simde__m512i_to_private(v).i32[i]; return emu_from_f32(f); }}
static inline simde__m512i emu_cvtepu16_epi32(__m256i v) {{
  uint16_t a[16]; std::memcpy(a, &v, 32); int r[16]; for (int i = 0; i < 16; ++i) r[i] = a[i]; return emu_from_i32(r); }}
static inline simde__m512i emu_cvtepu8_epi32(__m128i v) {{
  uint8_t a[16]; std::memcpy(a, &v, 16); int r[16]; for (int i = 0; i < 16; ++i) r[i] = a[i]; return emu_from_i32(r); }}
static inline simde__m512 emu_cvtph_ps(__m256i v) {{
  __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(v)), hi = _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1));
  float f[16]; std::memcpy(f, &lo, 32); std::memcpy(f + 8, &hi, 32); return emu_from_f32(f); }}
static inline simde__m512i emu_cvtps_epi32(simde__m512 v) {{
  float f[16]; for (int i = 0; i < 16; ++i) f[i] = emu_f32(v, i);
  __m256 lo, hi; std::memcpy(&lo, f, 32); std::memcpy(&hi, f + 8, 32);
  __m256i l = _mm256_cvtps_epi32(lo), h = _mm256_cvtps_epi32(hi);
  int r[16]; std::memcpy(r, &l, 32); std::memcpy(r + 8, &h, 32); return emu_from_i32(r); }}
static inline __m256 emu_extractf32x8_ps(simde__m512 v, int imm) {{
  float f[8]; for (int i = 0; i < 8; ++i) f[i] = emu_f32(v, 8 * (imm & 1) + i);
  __m256 r; std::memcpy(&r, f, 32); return r; }}
static inline int emu_reduce_add_epi32(simde__m512i v) {{
  int s = 0; for (int i = 0; i < 16; ++i) s += simde__m512i_to_private(v).i32[i]; return s; }}
{fallbacks}
"""

EMULATION_HARNESS = r"""
// Runs both AVX-512 tables against the scalar reference on random rows; exit status = failures.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include "quant.h"
using namespace numatune;
static std::mt19937 rng(7);
static int check(const QuantKernels& k, GgmlType t, int rows, int n) {
  const TypeInfo& info = type_info(t);
  const size_t stride = row_bytes(t, n);
  std::vector<uint16_t> storage(rows * stride / 2 + 2);
  uint8_t* w = reinterpret_cast<uint8_t*>(storage.data());
  std::normal_distribution<float> normal(0, 1);
  std::uniform_real_distribution<float> scale(1e-3f, 1e-2f);
  for (size_t i = 0; i < rows * stride; ++i) w[i] = rng() & 0xff;
  for (int r = 0; r < rows; ++r) {
    uint8_t* row = w + r * stride;
    for (int b = 0; b < n / info.block_weights; ++b) {
      uint8_t* blk = row + b * info.block_bytes;
      const uint16_t d = f32_to_f16(scale(rng)), dmin = f32_to_f16(scale(rng));
      switch (t) {  // the f16 scales (d, and dmin or m) of each type's block
        case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q4_1: case GgmlType::Q5_1:
          std::memcpy(blk, &d, 2); std::memcpy(blk + 2, &dmin, 2); break;
        case GgmlType::Q2_K: std::memcpy(blk + 80, &d, 2); std::memcpy(blk + 82, &dmin, 2); break;
        case GgmlType::Q3_K: std::memcpy(blk + 108, &d, 2); break;
        case GgmlType::Q6_K: std::memcpy(blk + 208, &d, 2); break;
        case GgmlType::Q8_0: case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::IQ4_NL: case GgmlType::IQ4_XS:
        case GgmlType::IQ1_S: case GgmlType::IQ2_XXS: case GgmlType::IQ2_XS:
          std::memcpy(blk, &d, 2); break;
        case GgmlType::IQ1_M:   // d in the top nibbles of the four scale words
          for (int k = 0; k < 4; ++k) {
            uint16_t word; std::memcpy(&word, blk + 48 + 2 * k, 2);
            word = static_cast<uint16_t>((word & 0x0fff) | (((d >> (4 * k)) & 0xf) << 12));
            std::memcpy(blk + 48 + 2 * k, &word, 2);
          }
          break;
        case GgmlType::IQ3_XXS: case GgmlType::IQ2_S: case GgmlType::IQ3_S:
          std::memcpy(blk, &d, 2); break;
        case GgmlType::MXFP4: blk[0] = static_cast<uint8_t>(110 + rng() % 31); break;
        default: break;
      }
    }
    for (int i = 0; i < n && t == GgmlType::F32; ++i) reinterpret_cast<float*>(row)[i] = normal(rng);
    for (int i = 0; i < n && t == GgmlType::F16; ++i) reinterpret_cast<uint16_t*>(row)[i] = f32_to_f16(normal(rng));
    for (int i = 0; i < n && t == GgmlType::BF16; ++i) reinterpret_cast<uint16_t*>(row)[i] = f32_to_bf16(normal(rng));
  }
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  x[n / 2] = 9.0f;
  const size_t bytes = activation_bytes(t, n);
  std::vector<float> xq_ref(bytes / 4 + 1), xq(bytes / 4 + 1), y_ref(rows), y(rows), row(n);
  ref::quantize_activation(t, x.data(), n, xq_ref.data());
  k.quantize_activation(t, x.data(), n, xq.data());
  int failures = std::memcmp(xq_ref.data(), xq.data(), bytes) != 0;
  ref::gemv(t, w, stride, rows, xq_ref.data(), n, y_ref.data());
  k.gemv(t, w, stride, rows, xq_ref.data(), n, y.data());
  for (int r = 0; r < rows; ++r) {
    dequantize_row(t, w + r * stride, n, row.data());
    double magnitude = 0;
    for (int i = 0; i < n; ++i) magnitude += std::fabs(row[i] * x[i]) * 1.1;
    const float single = k.vec_dot(t, w + r * stride, xq_ref.data(), n);
    if (std::fabs(y[r] - y_ref[r]) > 1e-5 * magnitude || std::fabs(single - y_ref[r]) > 1e-5 * magnitude) ++failures;
  }
  if (failures) std::printf("%s %s rows=%d n=%d: %d failures\n", k.name, info.name, rows, n, failures);
  return failures;
}
int main() {
  int failures = 0;
  for (const QuantKernels* k : {&avx512_quant_kernels(false, false), &avx512_quant_kernels(false, true),
                                &avx512_quant_kernels(true, false), &avx512_quant_kernels(true, true)}) {
    for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS,
                       GgmlType::IQ1_S, GgmlType::IQ1_M, GgmlType::IQ2_XXS, GgmlType::IQ2_XS,
                       GgmlType::IQ3_XXS, GgmlType::IQ2_S, GgmlType::IQ3_S})
      for (int n : {256, 512, 768}) failures += check(*k, t, 7, n);
    for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL,
                       GgmlType::MXFP4})
      for (int n : {32, 96, 224}) failures += check(*k, t, 7, n);
    for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16})
      for (int n : {1, 100, 129, 1000}) failures += check(*k, t, 3, n) + check(*k, t, 9, n);
  }
  std::printf("%d failures\n", failures);
  return failures != 0;
}
"""

SIMDE_MISSING = ("cvtepi32_ps", "cvtepu16_epi32", "cvtepu8_epi32", "cvtph_ps", "cvtps_epi32",
                 "extractf32x8_ps", "reduce_add_epi32")


def simde_include_dir() -> Path | None:
    for root in (Path("/usr/include"), Path("/usr/local/include")):
        if (root / "simde" / "x86" / "avx512.h").exists():
            return root
    return None


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86-64 only")
def test_avx512_variant_under_emulation(tmp_path, require):
    """Compiles kernels/dot_avx512.cpp against SIMDe and runs it against the scalar reference."""
    source = KERNELS_SOURCE / "dot_avx512.cpp"
    if "avx2" not in _kernels.supported_isas():
        pytest.skip("the emulation runs on AVX2; this CPU has none")      # the host's CPU, not a missing tool
    require("g++")
    assert source.exists(), f"{source}: the kernels' source tree is missing"
    assert simde_include_dir() is not None, "SIMDe's headers are missing (Debian: libsimde-dev; .ci/run installs it)"
    shared = [KERNELS_SOURCE / h for h in re.findall(r'#include "(dot_\w+\.h)"', source.read_text())]
    assert shared, "dot_avx512.cpp includes no shared kernel header"
    used = sorted(set(re.findall(r"\b_mm(?:512|256)_\w+", source.read_text() + "".join(h.read_text() for h in shared))))
    aliases, fallbacks = [], []
    for name in used:
        suffix = name.split("_", 2)[2]
        if name.startswith("_mm512_") and suffix in SIMDE_MISSING:
            fallbacks.append(f"#undef {name}\n#define {name} emu_{suffix}")
        elif name.startswith("_mm512_") or name in ("_mm256_dpbusd_epi32", "_mm256_dpwssd_epi32"):
            aliases.append(f"#undef {name}\n#define {name} simde{name}")
    (tmp_path / "immintrin.h").write_text(
        EMULATION_HEADER.format(aliases="\n".join(aliases), fallbacks="\n".join(fallbacks)))
    (tmp_path / "harness.cpp").write_text(EMULATION_HARNESS)
    binary = tmp_path / "harness"
    subprocess.run(["g++", "-O1", "-std=c++17", "-w", "-mavx2", "-mfma", "-mf16c", "-DNUMATUNE_X86_VARIANTS=1",
                    f"-I{tmp_path}", f"-I{KERNELS_SOURCE}", str(tmp_path / "harness.cpp"), str(source),
                    *sorted(str(p) for p in KERNELS_SOURCE.glob("quant_*.cpp") if p.name != "quant_dispatch.cpp"),
                    "-o", str(binary)],
                   check=True, capture_output=True, text=True, timeout=300)
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout


# ---- the types through the CLI

NEW_TYPES = ("Q2_K", "Q3_K", "Q5_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "IQ1_S", "IQ1_M", "IQ2_XXS",
             "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ3_S", "MXFP4")


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_model_synth_writes_each_type_and_the_engine_runs_it(type_name, tmp_path, capsys):
    from numatune.cli import main
    from numatune.gguf_moe import read_moe_model
    path = tmp_path / f"{type_name}.gguf"
    assert main(["model", "synth", "--out", str(path), "--layers", "1", "--experts", "8",
                 "--type", type_name.lower()]) == 0
    layer = read_moe_model(path).layers[0]
    assert {layer.gate.type_name, layer.up.type_name, layer.down.type_name} == {type_name}
    capsys.readouterr()
    code = main(["bench", "--model", str(path), "--threads", "1", "--tokens", "2", "--repeats", "1",
                 "--no-bandwidth", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    import json
    result = json.loads(out)
    # 8 of 8 experts per token: every expert byte of the layer is read once per token
    assert result["bytes_per_token"] >= sum(t.data.nbytes for t in (layer.gate, layer.up, layer.down))
    assert result["tokens_per_s"]["median"] > 0


def test_cli_names_tensor_type_and_nearest_synthetic_type(tmp_path, capsys):
    import gguf
    from numatune.cli import main
    path = tmp_path / "tq2.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3moe")
    writer.add_uint32("qwen3moe.expert_count", 2)
    writer.add_uint32("qwen3moe.expert_used_count", 1)
    writer.add_tensor("blk.0.ffn_gate_inp.weight", np.zeros((2, 256), np.float32))
    q4 = quants.quantize(np.ones((2, 256, 256), np.float32), "Q4_K")
    writer.add_tensor("blk.0.ffn_gate_exps.weight", q4.reshape(2, 256, -1), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    tq2 = np.zeros((2, 256, 66), np.uint8)   # TQ2_0 (ternary): 66 bytes per 256 weights
    for name in ("up", "down"):
        writer.add_tensor(f"blk.0.ffn_{name}_exps.weight", tq2, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code = main(["bench", "--model", str(path), "--threads", "1", "--tokens", "1", "--repeats", "1", "--no-bandwidth"])
    out, err = capsys.readouterr()
    assert code == 2
    nearest = quants.nearest_supported_type("TQ2_0")
    assert abs(quants.bits_per_weight(nearest) - 2.0625) < 0.6
    assert err.strip() == (f"numatune: error: {path}: blk.0.ffn_up_exps.weight is TQ2_0 (2.06 bpw), not supported; "
                           f"nearest synthetic: --type {nearest} ({quants.bits_per_weight(nearest):.3g} bpw)"), err
