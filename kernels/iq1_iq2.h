// The low-bit lattice types IQ1_S, IQ1_M, IQ2_XXS and IQ2_XS: block layouts (ggml's, byte for
// byte), their decoding to integers, and the scalar truth of their dequantization and dot
// product (quant_ref_iq1_iq2.cpp). The vector kernels are in dot_x86_iq1_iq2.h.
//
// Each block holds 256 weights as indices into a codebook of 8 values (kernels/iq_grids.h):
//  * IQ2_XXS, IQ2_XS: entries of values 8, 25 or 43, each made negative or not by a 7-bit index into
//    iq_ksigns (8 sign bits of even parity). w = d·(0.5 + s)·0.25·(±grid) = d·(2s + 1)·(±grid) / 8
//    with a 4-bit s per 32 (IQ2_XXS) or 16 (IQ2_XS) weights.
//  * IQ1_S, IQ1_M: entries of values −1, 0, 1 and a shift δ = ±1/8 of a group of weights:
//    w = d·(2s + 1)·(grid + δ) = d·(2s + 1)·(8·grid ± 1) / 8 with a 3-bit s per 32 (IQ1_S) or 16
//    (IQ1_M) weights, δ per 32 (IQ1_S) or 8 (IQ1_M) weights.
// So every type is, per block, int8 values q (±grid, or 8·grid ± 1), one integer scale 2s + 1 per
// group of 16 and a float d: Σ w·x = d·dx·Σ_g (2s + 1)·(Σ q·xq) / 8 against Q8_K, exactly in integers
// up to the last product.
#pragma once
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

inline bool is_iq1_iq2(GgmlType type) {
    return type == GgmlType::IQ1_S || type == GgmlType::IQ1_M || type == GgmlType::IQ2_XXS ||
           type == GgmlType::IQ2_XS;
}

// IQ1_M's f16 d, from the top nibbles of its scales.
inline uint16_t iq1m_d(const BlockIQ1M& w) {
    uint16_t s[4];
    std::memcpy(s, w.scales, sizeof s);
    return static_cast<uint16_t>((s[0] >> 12) | ((s[1] >> 8) & 0x00f0) | ((s[2] >> 4) & 0x0f00) | (s[3] & 0xf000));
}

// Scalar (quant_ref_iq1_iq2.cpp): the weights of n / 256 blocks as floats (bit-exact with
// gguf.quants), and a row's dot product with a Q8_K activation.
void dequantize_iq1_iq2(GgmlType type, const void* row, int n, float* y);
float dot_iq1_iq2(GgmlType type, const void* row, const BlockQ8K* x, int n);

}  // namespace numatune
