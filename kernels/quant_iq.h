// The codebook ("lattice") types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ3_XXS, IQ2_S, IQ3_S, and gpt-oss's
// MXFP4: block layouts (ggml's, byte for byte), and the scalar truth of their dequantization and
// dot product (quant_iq.cpp). The vector kernels are in dot_x86_iq.h.
//
// Every one of these types is, per block, small signed integers q in weight order, one integer
// scale per group of 16 weights and a float factor:  w = factor · scale · q.
//  * IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: q = ±grid, grid an entry of 4 or 8 unsigned values
//    of a codebook (kernels/iq_grids.h) per group of 4 or 8 weights, the sign one bit per weight
//    (IQ2_XXS, IQ2_XS, IQ3_XXS: a 7-bit index into iq_ksigns per 8 weights, 8 bits of even
//    parity). scale = 2s + 1 (4-bit s per 16 or 32 weights); factor = d/8 (IQ2), d/4 (IQ3_XXS),
//    d (IQ3_S).
//  * IQ1_S, IQ1_M: codebook values −1, 0, 1 and a shift δ = ±1/8 of a group of weights:
//    q = 8·grid ± 1, scale = 2s + 1 (3-bit s), factor = d/8.
//  * MXFP4: 32 weights, q = twice an E2M1 value (kMxfp4Values), scale 1, factor = 2^(e − 128).
// factor·scale·q needs at most 11 + 5 + 6 bits, so it is exact in float in any order of
// operations: the dequantized floats are gguf.quants' bits, and the dot product against Q8_K
// (Q8_0 for MXFP4) is exact in integers up to the last products.
#pragma once
#include <cstdint>
#include <cstring>

#include "iq_grids.h"
#include "quant.h"

namespace numatune {

// IQ2_XXS: sub-block b (weights 32b..32b+31) is qs[4b..4b+3] read as two little-endian 32-bit
// words: the first holds the grid indices of its four groups of 8 (one byte each), the second
// the four 7-bit sign indices (bits 7j..7j+6 for group j) and s in bits 28-31.
struct BlockIQ2XXS {
    uint16_t d;          // f16
    uint16_t qs[kQK / 8];
};
static_assert(sizeof(BlockIQ2XXS) == 66, "IQ2_XXS block is 66 bytes");

// IQ2_XS: qs[i] is group i of 8 weights: grid index in bits 0-8, sign index in bits 9-15. The s
// of weights 16k..16k+15 is nibble k % 2 of scales[k / 2].
struct BlockIQ2XS {
    uint16_t d;          // f16
    uint16_t qs[kQK / 8];
    uint8_t scales[kQK / 32];
};
static_assert(sizeof(BlockIQ2XS) == 74, "IQ2_XS block is 74 bytes");

// IQ1_S: group i of 8 weights has the 11-bit grid index qs[i] | bits 3(i % 4)..+2 of qh[i / 4] << 8;
// qh[b] also holds sub-block b's s (bits 12-14) and the sign of its δ (bit 15 set: −1/8).
struct BlockIQ1S {
    uint16_t d;          // f16
    uint8_t qs[kQK / 8];
    uint16_t qh[kQK / 32];
};
static_assert(sizeof(BlockIQ1S) == 50, "IQ1_S block is 50 bytes");

// IQ1_M: group i's grid index is qs[i] | bits 0-2 of nibble i % 2 of qh[i / 2] << 8, bit 3 of that
// nibble the sign of its δ. The s of weights 16k..16k+15 is bits 3(k % 4)..+2 of scales[k / 4];
// bits 12-15 of scales[0..3] are the four nibbles of d (f16), lowest first.
struct BlockIQ1M {
    uint8_t qs[kQK / 8];
    uint8_t qh[kQK / 16];
    uint16_t scales[4];
};
static_assert(sizeof(BlockIQ1M) == 56, "IQ1_M block is 56 bytes");

// IQ3_XXS: 8 sub-blocks of 32 weights. Sub-block b: qs[8b .. 8b+7] index iq3xxs_grid (4 values
// each, weights 4k..4k+3); its 32-bit word scales_signs[b] (little-endian, after the 64 bytes of
// qs) has IQ2_XXS's second word's layout: four 7-bit sign indices and s in bits 28-31.
struct BlockIQ3XXS {
    uint16_t d;          // f16
    uint8_t qs[kQK / 4];
    uint8_t scales_signs[kQK / 8];
};
static_assert(sizeof(BlockIQ3XXS) == 98, "IQ3_XXS block is 98 bytes");

// IQ2_S: 16 groups of 16 weights. Group pair b (weights 32b .. 32b+31) has the 10-bit indices
// qs[4b + k] | (bits 2k..2k+1 of qh[b]) << 8 into iq2s_grid (8 values each, weights 32b + 8k ..),
// sign bits signs[4b .. 4b+3] (bit i of the 32-bit word: weight 32b + i) and scales scales[b]
// (low nibble: first 16 weights, high nibble: last 16).
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
// and the scale s in nibble b % 2 of scales[b / 2].
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

inline uint32_t load_le32(const void* bytes) {
    uint32_t v;
    std::memcpy(&v, bytes, sizeof v);
    return v;
}

inline uint64_t load_le64(const void* bytes) {
    uint64_t v;
    std::memcpy(&v, bytes, sizeof v);
    return v;
}

// The 32 sign bits of the word of an IQ2_XXS or IQ3_XXS sub-block (bit i: weight i negated).
inline uint32_t ksign_bits(uint32_t word) {
    return iq_ksigns[word & 127] | static_cast<uint32_t>(iq_ksigns[(word >> 7) & 127]) << 8 |
           static_cast<uint32_t>(iq_ksigns[(word >> 14) & 127]) << 16 |
           static_cast<uint32_t>(iq_ksigns[(word >> 21) & 127]) << 24;
}

// IQ1_M's f16 d, from the top nibbles of its scales.
inline uint16_t iq1m_d(const BlockIQ1M& w) {
    uint16_t s[4];
    std::memcpy(s, w.scales, sizeof s);
    return static_cast<uint16_t>((s[0] >> 12) | ((s[1] >> 8) & 0x00f0) | ((s[2] >> 4) & 0x0f00) | (s[3] & 0xf000));
}

// The 10-bit IQ2_S grid index k (0..3) of group pair b, and the 9-bit IQ3_S index k (0..7) of
// sub-block b.
inline int iq2s_index(const BlockIQ2S& w, int b, int k) { return w.qs[4 * b + k] | ((w.qh[b] >> (2 * k)) & 3) << 8; }
inline int iq3s_index(const BlockIQ3S& w, int b, int k) { return w.qs[8 * b + k] | ((w.qh[b] >> k) & 1) << 8; }

namespace iq {
// True for the eight types of this file.
bool handles(GgmlType type);
// Scalar dequantization (bit-exact with gguf.quants) and dot product with the type's activation
// (Q8_K; Q8_0 for MXFP4).
void dequantize(GgmlType type, const void* row, int n, float* y);
float vec_dot(GgmlType type, const void* row, const void* xq, int n);
}  // namespace iq

}  // namespace numatune
