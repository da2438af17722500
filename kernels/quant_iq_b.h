// IQ3_XXS, IQ2_S, IQ3_S and MXFP4: block layouts and their scalar helpers (quant.h has the other
// types). The IQ types store, per group of 4 or 8 weights, an index into a codebook of unsigned
// magnitudes (kernels/iq_grids.h) and one sign bit per weight; a weight is
//   w = d · scale(sub-block) · grid[index][k] · sign,
// so its value times a power-of-two divisor is an integer (≤ 62), dotted with Q8_K activations as
// the K-quants are. MXFP4 (gpt-oss) is a legacy-style block of 32 E2M1 floats with a shared E8M0
// exponent: twice its values are the integers of kMxfp4Values, dotted with Q8_0 activations.
//
// quant_iq_b.cpp is the scalar truth (dequantisation bit-exact with gguf.quants), dot_iq_b.h
// the AVX2 / AVX-512 kernels.
#pragma once
#include <cstdint>
#include <cstring>

#include "iq_grids.h"
#include "quant.h"

namespace numatune {

// IQ3_XXS: 8 sub-blocks of 32 weights. Sub-block b: qs[8b .. 8b+7] index iq3xxs_grid (4 values
// each, weights 4k..4k+3); its 32-bit word scales_signs[b] (little-endian, after the 64 bytes of
// qs) holds four 7-bit sign indices into iq_ksigns (bits 7g..7g+6: the signs of weights 8g..8g+7)
// and the scale s in bits 28-31: w = d·(2s + 1)/4 · grid · sign.
struct BlockIQ3XXS {
    uint16_t d;          // f16
    uint8_t qs[kQK / 4];
    uint8_t scales_signs[kQK / 8];
};
static_assert(sizeof(BlockIQ3XXS) == 98, "IQ3_XXS block is 98 bytes");

// IQ2_S: 16 groups of 16 weights. Group pair b (weights 32b .. 32b+31) has the 10-bit indices
// qs[4b + k] | (bits 2k..2k+1 of qh[b]) << 8 into iq2s_grid (8 values each, weights 32b + 8k ..),
// sign bits signs[4b .. 4b+3] (bit i of the 32-bit word: weight 32b + i) and scales scales[b]
// (low nibble: first 16 weights, high nibble: last 16): w = d·(2s + 1)/8 · grid · sign.
struct BlockIQ2S {
    uint16_t d;          // f16
    uint8_t qs[kQK / 8];
    uint8_t signs[kQK / 8];
    uint8_t qh[kQK / 32];
    uint8_t scales[kQK / 32];
};
static_assert(sizeof(BlockIQ2S) == 82, "IQ2_S block is 82 bytes");

// IQ3_S: 8 sub-blocks of 32 weights. Sub-block b has the 9-bit indices qs[8b + k] | (bit k of
// qh[b]) << 8 into iq3s_grid (4 values each), sign bits signs[4b .. 4b+3] (bit i: weight 32b + i)
// and the scale s in nibble b % 2 of scales[b / 2]: w = d·(2s + 1) · grid · sign.
struct BlockIQ3S {
    uint16_t d;          // f16
    uint8_t qs[kQK / 4];
    uint8_t qh[kQK / 32];
    uint8_t signs[kQK / 8];
    uint8_t scales[kQK / 64];
};
static_assert(sizeof(BlockIQ3S) == 110, "IQ3_S block is 110 bytes");

// MXFP4: 32 weights, w = 2^(e − 128) · kMxfp4Values[q] (the E2M1 value, doubled, times half the
// E8M0 scale 2^(e − 127)); nibbles as in Q4_0 (low: weights 0-15, high: 16-31).
struct BlockMXFP4 {
    uint8_t e;
    uint8_t qs[kQ8 / 2];
};
static_assert(sizeof(BlockMXFP4) == 17, "MXFP4 block is 17 bytes");

constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// 2^(e − 128) as a float, exactly (e = 0 and 1 are subnormal); ggml's e8m0 "half" conversion.
inline float e8m0_half(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// The 32 sign bits of an IQ3_XXS sub-block's word (bit i: weight i of the sub-block negated).
inline uint32_t iq3xxs_sign_bits(uint32_t word) {
    return iq_ksigns[word & 127] | static_cast<uint32_t>(iq_ksigns[(word >> 7) & 127]) << 8 |
           static_cast<uint32_t>(iq_ksigns[(word >> 14) & 127]) << 16 |
           static_cast<uint32_t>(iq_ksigns[(word >> 21) & 127]) << 24;
}

inline uint32_t load_le32(const uint8_t* bytes) {
    uint32_t v;
    std::memcpy(&v, bytes, sizeof v);
    return v;
}

// The 10-bit IQ2_S grid index k (0..3) of group pair b, and the 9-bit IQ3_S index k (0..7) of
// sub-block b.
inline int iq2s_index(const BlockIQ2S& w, int b, int k) { return w.qs[4 * b + k] | ((w.qh[b] >> (2 * k)) & 3) << 8; }
inline int iq3s_index(const BlockIQ3S& w, int b, int k) { return w.qs[8 * b + k] | ((w.qh[b] >> k) & 1) << 8; }

namespace iq_b {
// True for the four types of this file.
bool handles(GgmlType type);
// Scalar dequantisation (bit-exact with gguf.quants) and dot product with the type's activation.
void dequantize(GgmlType type, const void* row, int n, float* y);
float vec_dot(GgmlType type, const void* row, const void* xq, int n);
}  // namespace iq_b

}  // namespace numatune
