"""IQ3_XXS, IQ2_S, IQ3_S and MXFP4 (kernels/quant_iq_b.*, kernels/dot_iq_b.h): dequantisation
bit-exact with gguf.quants, dot products of every ISA variant this CPU runs against a float64
reference, and the engine end to end on synthetic models of each type against the torch reference.

Random bytes are valid blocks of these types, except that the f16 d must be finite (IQ types) and
MXFP4's E8M0 exponent small enough for 12·2^(e − 128) to be finite (e ≤ 252) in the dot tests.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from numatune import _kernels, quants
from test_engine import isa  # noqa: F401 (the fixture: every ISA variant in turn)
from test_quant import FLOAT_SLACK, activation_half_step, decode_activation

VARIANTS = _kernels.quant_variants()
TYPES = ("IQ3_XXS", "IQ2_S", "IQ3_S", "MXFP4")
IQ_TYPES = TYPES[:3]
# The activation format each pairs with, named by a type test_quant's decoders know.
TWIN = {"IQ3_XXS": "Q4_K", "IQ2_S": "Q4_K", "IQ3_S": "Q4_K", "MXFP4": "Q8_0"}
SIZES = {"IQ3_XXS": (256, 768), "IQ2_S": (256, 768), "IQ3_S": (256, 768), "MXFP4": (32, 96, 224)}
CASES = [(t, n) for t in TYPES for n in SIZES[t]]
ROWS = 9


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261207)


def random_bytes(type_name: str, rows: int, n: int, rng, *, scales: str = "sane") -> np.ndarray:
    """rows of random blocks. scales="sane": d in ±[1e-3, 1e-2] (MXFP4: e in 110..140);
    "any": every finite f16 d, subnormal and negative included (MXFP4: every exponent 0..255)."""
    weights, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    blocks = rng.integers(0, 256, size=(rows, n // weights, nbytes), dtype=np.uint8)
    if type_name == "MXFP4":
        blocks[..., 0] = rng.integers(0, 256, size=blocks.shape[:2]) if scales == "any" else \
            rng.integers(110, 141, size=blocks.shape[:2])
        return blocks.reshape(rows, -1)
    if scales == "any":
        d = rng.integers(0, 1 << 16, size=blocks.shape[:2], dtype=np.uint16)
        d[(d & 0x7c00) == 0x7c00] &= 0x83ff          # inf/nan → a subnormal of the same sign
    else:
        d = (rng.uniform(1e-3, 1e-2, size=blocks.shape[:2]) * rng.choice([-1, 1], size=blocks.shape[:2]))
        d = d.astype(np.float16).view(np.uint16)
    blocks[..., 0:2] = d.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


# ---- dequantisation


@pytest.mark.parametrize("scales", ["sane", "any"])
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_equals_gguf_bit_for_bit(type_name, scales, rng):
    n = 2048
    data = random_bytes(type_name, 16, n, rng, scales=scales)
    ours = np.stack([_kernels.dequantize_row(type_name, row.tobytes()) for row in data])
    with np.errstate(over="ignore"):   # MXFP4: 12·2^(e − 128) overflows to inf for e > 252, in both
        theirs = np.asarray(gguf_quants.dequantize(data, GGMLQuantizationType[type_name]), np.float32)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_each_sign_bit_and_high_index_bit_reaches_its_weight(rng):
    """A change of one sign bit negates exactly its weight; one high index bit (IQ3_S qh, IQ2_S qh)
    changes exactly its group's weights; IQ3_XXS's scale nibble rescales exactly its 32 weights."""
    def decoded(type_name, block):
        return _kernels.dequantize_row(type_name, block.tobytes())
    iq3s = random_bytes("IQ3_S", 1, 256, rng)[0]
    signs = 2 + 64 + 8                                   # d, qs, qh
    flipped = iq3s.copy()
    flipped[signs + 5] ^= 1 << 3                         # bit 3 of sign byte 5: weight 43
    a, b = decoded("IQ3_S", iq3s), decoded("IQ3_S", flipped)
    assert np.flatnonzero(a != b).tolist() == [43] and b[43] == -a[43]
    high = iq3s.copy()
    high[2 + 64 + 2] ^= 1 << 6                           # qh[2] bit 6: index 6 of sub-block 2, weights 88..91
    assert np.flatnonzero(decoded("IQ3_S", high) != a).tolist() == list(range(88, 92))
    iq2s = random_bytes("IQ2_S", 1, 256, rng)[0]
    high = iq2s.copy()
    high[2 + 32 + 32 + 1] ^= 0b11 << 4                   # qh[1] bits 4-5: index 2 of pair 1, weights 48..55
    changed = np.flatnonzero(decoded("IQ2_S", high) != decoded("IQ2_S", iq2s))
    assert set(changed.tolist()) <= set(range(48, 56)) and changed.size > 0
    iq3xxs = random_bytes("IQ3_XXS", 1, 256, rng)[0]
    rescaled = iq3xxs.copy()
    rescaled[2 + 64 + 4 * 3 + 3] ^= 0x10                 # scale nibble of sub-block 3
    changed = np.flatnonzero(decoded("IQ3_XXS", rescaled) != decoded("IQ3_XXS", iq3xxs))
    assert changed.tolist() == list(range(96, 128))


# ---- dot products against float64


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name, n", CASES)
def test_gemv_matches_float64_reference(variant, type_name, n, rng):
    weights = random_bytes(type_name, ROWS, n, rng)
    w = quants.dequantize(weights, type_name).astype(np.float64)
    x = rng.standard_normal(n).astype(np.float32)
    x[n // 2] = 9.0

    y = _kernels.gemv(type_name, weights, x, isa=variant)

    twin = TWIN[type_name]
    xq = decode_activation(twin, _kernels.quantize_activation(type_name, x, isa=variant), n)
    magnitude = np.abs(w) @ np.abs(xq)
    # exact integer sums: only the float rounding of the per-block scaling remains
    np.testing.assert_array_less(np.abs(y - w @ xq), FLOAT_SLACK * magnitude + 1e-30)
    # against the float activation: within what quantizing x can change
    bound = np.abs(w) @ activation_half_step(twin, x) + FLOAT_SLACK * magnitude + 1e-30
    np.testing.assert_array_less(np.abs(y - w @ x.astype(np.float64)), bound)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name, n", CASES)
def test_variant_matches_scalar(variant, type_name, n, rng):
    weights = random_bytes(type_name, ROWS, n, rng)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    activation = _kernels.quantize_activation(type_name, x, isa=variant)
    assert activation.tobytes() == _kernels.quantize_activation(type_name, x, isa="scalar").tobytes()
    y = _kernels.gemv(type_name, weights, x, isa=variant)
    y_scalar = _kernels.gemv(type_name, weights, x, isa="scalar")
    magnitude = np.abs(quants.dequantize(weights, type_name)).astype(np.float64) @ np.abs(
        decode_activation(TWIN[type_name], activation, n))
    np.testing.assert_array_less(np.abs(y - y_scalar), FLOAT_SLACK * magnitude + 1e-30)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name", TYPES)
def test_extreme_blocks(variant, type_name, rng):
    """Largest magnitudes with the largest scale against ±127 activations (the integer sums'
    worst case), all-negative signs, and zero weights."""
    n = 512
    weights = random_bytes(type_name, 4, n, rng)
    nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]
    blocks = weights.reshape(4, -1, nbytes)
    if type_name == "IQ3_XXS":
        blocks[0, :, 2:] = 0xff                              # grid entry 255, scale 15, sign index 127
    elif type_name == "IQ3_S":
        blocks[0, :, 2:] = 0xff                              # index 511, all signs, scales 15
    elif type_name == "IQ2_S":
        blocks[0, :, 2:] = 0xff                              # index 1023, all signs, scales 15
    else:
        blocks[0, :, 1:] = 0xff                              # −12 everywhere
    blocks[1] = 0
    weights = blocks.reshape(4, -1)
    x = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    y = _kernels.gemv(type_name, weights, x, isa=variant)
    w = quants.dequantize(weights, type_name).astype(np.float64)
    xq = decode_activation(TWIN[type_name], _kernels.quantize_activation(type_name, x, isa=variant), n)
    assert np.all(np.abs(xq) > 0.99) and y[1] == 0
    np.testing.assert_array_less(np.abs(y - w @ xq), FLOAT_SLACK * (np.abs(w) @ np.abs(xq)) + 1e-30)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("type_name", TYPES)
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(variant, type_name, rng):
    n = 512
    weights = random_bytes(type_name, 21, n, rng)
    x = rng.standard_normal(n).astype(np.float32)
    alone = np.array([_kernels.gemv(type_name, weights[r:r + 1], x, isa=variant)[0] for r in range(21)])
    for first, count in ((0, 21), (0, 8), (3, 10), (5, 13), (20, 1), (1, 2)):
        together = _kernels.gemv(type_name, weights[first:first + count], x, isa=variant)
        assert together.tobytes() == alone[first:first + count].tobytes(), (first, count)


# ---- synthetic weights


def test_mxfp4_is_quantized_by_gguf(rng):
    weights = rng.standard_normal((8, 1024)).astype(np.float32)
    data = quants.quantize(weights, "MXFP4")
    back = quants.dequantize(data, "MXFP4")
    # measured 0.10 relative RMS error on N(0, 1) (E2M1 values, power-of-two scales)
    assert np.sqrt(np.mean((back - weights) ** 2)) < 0.12
    assert np.array_equal(data, gguf_quants.quantize(weights, GGMLQuantizationType.MXFP4).view(np.uint8))


# ---- the engine end to end (model synth + bench of each type: test_quant.py's NEW_TYPES)


# The engine quantizes the activation to 8 bits (as for the other types); measured relative
# errors against the float64 torch reference are 0.014-0.023 on these layers (all ISA variants).
ENGINE_TOLERANCE = 0.03


@pytest.mark.parametrize("type_name", TYPES)
def test_engine_layers_match_the_torch_reference(type_name, tmp_path, host, isa):
    """DeepSeek-V3's shape in small (grouped routing, a shared expert, a dense block), every FFN
    matrix in the type, on two workers."""
    from numatune.engine import Engine
    from numatune.synth import synthesize
    from test_moe_reference import compare, small
    preset = replace(small("deepseek-v3"), hidden=512, intermediate=256, shared_width=512)
    path = synthesize(tmp_path / f"{type_name}.gguf", preset, type_name, seed=11).path
    cpus = (sorted(os.sched_getaffinity(0)) * 2)[:2]
    engine = Engine.load(path, cpus, "first-touch", topology=host)
    compare(engine, path, ENGINE_TOLERANCE, seeds=range(2))
