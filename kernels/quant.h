// GGUF weight formats, the activation formats they are dotted with, and the row kernels of the
// engine's hot loop (y = W·x for batch-1 decode).
//
// Weight blocks have ggml's layouts byte for byte, so rows of a memory-mapped GGUF file are used
// in place. The activation x is converted once per token into the format its weights pair with
// (Q8_K for the K-quants Q2_K..Q6_K, IQ4_XS and the 256-weight IQ types, Q8_0 for Q4_0, Q5_0, Q8_0, IQ4_NL
// and MXFP4 rows, Q8_1
// for Q4_1 and Q5_1, a plain float copy for F32/F16/BF16 rows);
// the dot products of the quantized formats are then integer sums per block, scaled once per block.
//
// quant_ref.cpp is the scalar truth; dot_avx2.cpp and dot_avx512.cpp are variants of the same
// functions, each compiled with its own instruction-set flags (dot_x86_blocks.h holds the kernels
// of the types both share); quant_dispatch.cpp chooses.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace numatune {

// Numbers as in ggml's enum ggml_type (and in GGUF tensor infos).
enum class GgmlType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18,
    IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, IQ1_M = 29, BF16 = 30, MXFP4 = 39
};

// What a weight type's rows are dotted with.
enum class ActivationFormat { f32, q8_0, q8_1, q8_k };

constexpr int kQK = 256;   // weights of a K-quant super-block (Q2_K .. Q6_K, Q8_K)
constexpr int kQ8 = 32;    // weights of a legacy block (Q4_0 .. Q8_0, Q8_1)

// ---- legacy blocks of 32 weights. Byte l of qs holds weight l (low nibble) and weight 16+l
// (high nibble); in Q5_0/Q5_1 bit i of the little-endian 32-bit qh is the fifth bit of weight i.
struct BlockQ4_0 {       // w = d·(q − 8), q in 0..15
    uint16_t d;          // f16
    uint8_t qs[kQ8 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

struct BlockQ4_1 {       // w = d·q + m, q in 0..15
    uint16_t d, m;       // f16
    uint8_t qs[kQ8 / 2];
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");

struct BlockQ5_0 {       // w = d·(q − 16), q in 0..31
    uint16_t d;          // f16
    uint8_t qh[4];
    uint8_t qs[kQ8 / 2];
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block is 22 bytes");

struct BlockQ5_1 {       // w = d·q + m, q in 0..31
    uint16_t d, m;       // f16
    uint8_t qh[4];
    uint8_t qs[kQ8 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block is 24 bytes");

// IQ4_NL: w = d·kIq4Values[q], q in 0..15 (nibbles as in Q4_0): a non-uniform 4-bit grid.
struct BlockIQ4NL {
    uint16_t d;          // f16
    uint8_t qs[kQ8 / 2];
};
static_assert(sizeof(BlockIQ4NL) == 18, "IQ4_NL block is 18 bytes");

// The grid of IQ4_NL and IQ4_XS (ggml's kvalues_iq4nl).
constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// ---- K-quant super-blocks of 256 weights

// Q2_K: 16 groups of 16 weights, w = d·(scales[g] & 15)·q − dmin·(scales[g] >> 4), q in 0..3.
// Weight 128h + 32j + l (h in 0..1, j in 0..3, l in 0..31) is bits 2j..2j+1 of qs[32h + l];
// its group is its index / 16.
struct BlockQ2K {
    uint8_t scales[kQK / 16];
    uint8_t qs[kQK / 4];
    uint16_t d;          // f16
    uint16_t dmin;       // f16
};
static_assert(sizeof(BlockQ2K) == 84, "Q2_K block is 84 bytes");

// Q3_K: 16 groups of 16 weights, w = d·(s[g] − 32)·(q − 4), q in 0..7 and s 6 bits (see
// q3k_unpack_scales). Weight i = 128h + 32j + l: bits 0-1 of q are bits 2j..2j+1 of qs[32h + l]
// (as in Q2_K), bit 2 is bit i / 32 of hmask[l].
struct BlockQ3K {
    uint8_t hmask[kQK / 8];
    uint8_t qs[kQK / 4];
    uint8_t scales[12];
    uint16_t d;          // f16
};
static_assert(sizeof(BlockQ3K) == 110, "Q3_K block is 110 bytes");

// Q5_K: Q4_K (below) with a fifth bit per weight: bit 4 of weight i is bit i / 32 of qh[i % 32].
struct BlockQ5K {
    uint16_t d;          // f16
    uint16_t dmin;       // f16
    uint8_t scales[12];
    uint8_t qh[kQK / 8];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5K) == 176, "Q5_K block is 176 bytes");

// Q4_K: 8 sub-blocks of 32 weights, w = d·sc[s]·q − dmin·m[s] with q in 0..15.
// Byte l of the j-th 32-byte run of qs holds weight 64j+l (low nibble, sub-block 2j) and weight
// 64j+32+l (high nibble, sub-block 2j+1). scales packs sc[8] and m[8], 6 bits each: see
// q4k_unpack_scales.
struct BlockQ4K {
    uint16_t d;          // f16
    uint16_t dmin;       // f16
    uint8_t scales[12];
    uint8_t qs[128];
};
static_assert(sizeof(BlockQ4K) == 144, "Q4_K block is 144 bytes");

// Q6_K: 16 groups of 16 weights, w = d·scales[g]·(q − 32) with q in 0..63.
// In each half h (weights 128h..128h+127), with l in 0..31, L = ql + 64h, H = qh + 32h:
//   weight 128h+l    = low  nibble of L[l]    | bits 0-1 of H[l] << 4
//   weight 128h+32+l = low  nibble of L[l+32] | bits 2-3 of H[l] << 4
//   weight 128h+64+l = high nibble of L[l]    | bits 4-5 of H[l] << 4
//   weight 128h+96+l = high nibble of L[l+32] | bits 6-7 of H[l] << 4
struct BlockQ6K {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;          // f16
};
static_assert(sizeof(BlockQ6K) == 210, "Q6_K block is 210 bytes");

// IQ4_XS: 8 sub-blocks of 32 weights, w = d·(s[b] − 32)·kIq4Values[q]; s[b] has 6 bits: the low
// 4 in nibble b % 2 of scales_l[b / 2], the top 2 in bits 2b..2b+1 of scales_h. Sub-block b's
// 16 bytes of qs hold its weights as a legacy block does (low nibbles 0-15, high 16-31).
struct BlockIQ4XS {
    uint16_t d;          // f16
    uint16_t scales_h;
    uint8_t scales_l[kQK / 64];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockIQ4XS) == 136, "IQ4_XS block is 136 bytes");

// Q8_0: w = d·qs[i]. Both a weight format and the activation format of Q8_0 weights.
struct BlockQ8_0 {
    uint16_t d;          // f16
    int8_t qs[kQ8];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

// Q8_1: the activation format of Q4_1 and Q5_1 weights, Q8_0 with the block's Σ qs, which turns
// their offset m into one product per block. (ggml stores d·Σ qs as f16; the exact integer sum
// is kept here, so the offset term has no rounding of its own.)
struct BlockQ8_1 {
    uint16_t d;          // f16
    int16_t sum;         // Σ qs, within ±32·127
    int8_t qs[kQ8];
};
static_assert(sizeof(BlockQ8_1) == 36, "Q8_1 block is 36 bytes");

// Q8_K: the activation format of Q4_K and Q6_K weights. bsums[g] = Σ qs[16g .. 16g+15], which
// turns the minimum of Q4_K and the −32 offset of Q6_K into one small product per group.
struct BlockQ8K {
    float d;
    int8_t qs[kQK];
    int16_t bsums[kQK / 16];
};
static_assert(sizeof(BlockQ8K) == 292, "Q8_K block is 292 bytes");

struct TypeInfo {
    GgmlType type;
    const char* name;          // as GGUF spells it: "Q4_K"
    int block_weights;
    int block_bytes;
    ActivationFormat activation;
};

// The supported types, in GGML number order.
const std::vector<TypeInfo>& supported_types();
// nullptr when the type is not supported.
const TypeInfo* find_type(const std::string& name);
const TypeInfo* find_type(uint32_t ggml_number);
// Throws std::invalid_argument for a type outside supported_types().
const TypeInfo& type_info(GgmlType type);

// Throws std::invalid_argument (naming the type and n) unless n > 0 is a whole number of blocks.
void check_row_length(GgmlType type, long long n);
// Bytes of a row of n weights, and of the activation its rows are dotted with (n checked).
size_t row_bytes(GgmlType type, int n);
size_t activation_bytes(GgmlType type, int n);

// ---- scalar helpers shared by every variant (so that all produce the same activation bytes)

inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    const uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);              // inf, nan
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 → 127
    } else if (mantissa == 0) {
        bits = sign;
    } else {                                                        // subnormal: normalise
        int shift = 0;
        while ((mantissa & 0x400) == 0) {
            mantissa <<= 1;
            ++shift;
        }
        bits = sign | static_cast<uint32_t>(113 - shift) << 23 | ((mantissa & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest, ties to even (what F16C's vcvtps2ph does in its default mode).
inline uint16_t f32_to_f16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
    const uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7e00;                 // nan (quiet)
    if (magnitude >= 0x477ff000u) return sign | 0x7c00;                // rounds to inf
    if (magnitude < 0x38800000u) {                                     // f16 subnormal or zero
        if (magnitude < 0x33000000u) return sign;                      // below half the smallest
        const uint32_t mantissa = (magnitude & 0x7fffff) | 0x800000;
        const int shift = 126 - static_cast<int>(magnitude >> 23);      // 14..24
        const uint32_t kept = mantissa >> shift;
        const uint32_t rest = mantissa & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        const uint32_t rounded = kept + (rest > half || (rest == half && (kept & 1)));
        return sign | static_cast<uint16_t>(rounded);
    }
    const uint32_t rebased = magnitude - (112u << 23);                 // exponent 127 → 15
    const uint32_t rounded = rebased + 0xfff + ((rebased >> 13) & 1);
    return sign | static_cast<uint16_t>(rounded >> 13);
}

inline float bf16_to_f32(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest, ties to even; nan stays a quiet nan.
inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
    return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

// The scale of a symmetric 8-bit block whose largest magnitude is amax: q = round(x·inverse),
// x ≈ d·q. A block of zeros (or one too small for 127/amax to be finite) gets d = inverse = 0.
struct Int8Scale {
    float d;
    float inverse;
};
inline Int8Scale int8_scale(float amax) {
    const float inverse = amax > 0 ? 127.0f / amax : 0.0f;
    if (!(inverse < 3.0e38f)) return {0.0f, 0.0f};
    return {amax / 127.0f, inverse};
}

// Σ w[i]·x[i] over [from, n) of a float row (F32, F16 or BF16): the scalar tail that every
// vector variant of the float rows finishes with.
template <GgmlType kType>
inline float float_row_tail_dot(const void* row, const float* x, int from, int n) {
    float sum = 0;
    for (int i = from; i < n; ++i) {
        float w;
        if (kType == GgmlType::F32) w = static_cast<const float*>(row)[i];
        else if (kType == GgmlType::F16) w = f16_to_f32(static_cast<const uint16_t*>(row)[i]);
        else w = bf16_to_f32(static_cast<const uint16_t*>(row)[i]);
        sum += w * x[i];
    }
    return sum;
}

// Q4_K's 12 bytes of scales as four 32-bit words of bytes: sc[0..3], sc[4..7], m[0..3], m[4..7].
// Bytes 0-3 hold sc[0..3] in bits 0-5, 4-7 hold m[0..3]; bytes 8-11 hold the low 4 bits of
// sc[4..7] (low nibble) and m[4..7] (high nibble), whose top 2 bits sit in bits 6-7 of bytes 0-3
// (sc) and 4-7 (m).
inline void q4k_unpack_scales(const uint8_t packed[12], uint32_t words[4]) {
    uint32_t w[3];
    std::memcpy(w, packed, sizeof w);
    words[0] = w[0] & 0x3f3f3f3fu;
    words[1] = (w[2] & 0x0f0f0f0fu) | ((w[0] >> 2) & 0x30303030u);
    words[2] = w[1] & 0x3f3f3f3fu;
    words[3] = ((w[2] >> 4) & 0x0f0f0f0fu) | ((w[1] >> 2) & 0x30303030u);
}

// Q3_K's 12 bytes of scales as 16 signed values s − 32, in group order, as four 32-bit words.
// Bytes 0-7 hold the low 4 bits of s[0..7] (low nibble) and s[8..15] (high nibble); bits 2k..2k+1
// of byte 8 + j are the top 2 bits of s[4k + j].
inline void q3k_unpack_scales(const uint8_t packed[12], uint32_t words[4]) {
    uint32_t w[3];
    std::memcpy(w, packed, sizeof w);
    const uint32_t low = 0x0f0f0f0fu, two = 0x03030303u;
    const uint32_t s[4] = {(w[0] & low) | ((w[2] & two) << 4), (w[1] & low) | (((w[2] >> 2) & two) << 4),
                           ((w[0] >> 4) & low) | (((w[2] >> 4) & two) << 4),
                           ((w[1] >> 4) & low) | (((w[2] >> 6) & two) << 4)};
    // − 32 in each byte: values 0..63 become −32..31 (bytes never borrow from each other).
    for (int i = 0; i < 4; ++i) words[i] = ((s[i] | 0x80808080u) - 0x20202020u) ^ 0x80808080u;
}

// ---- the kernels
//
// Contract of every variant (the kernels do not check it; the bindings and the engine do):
//  * n > 0 is a whole number of blocks of the weight type (any n > 0 for F32, F16, BF16);
//  * a row is n weights of the type, contiguous; rows of a matrix are row_stride bytes apart;
//  * weight rows are 2-byte aligned (4-byte for F32; any for MXFP4, whose 17-byte blocks hold no
//    wider field) — always so in GGUF, whose tensor data is 32-byte aligned and whose other block
//    sizes are even — and xq is 4-byte aligned (2-byte for Q8_0
//    activations, whose 34-byte blocks a buffer may hold at any whole-block offset);
//  * xq holds activation_bytes(type, n) bytes written by quantize_activation for the same type.
//    Every variant writes the same bytes, so xq from one variant may be used by another.
// Nothing else is assumed: vector loads are unaligned, nothing reads past a row or past xq.
struct QuantKernels {
    const char* name;   // "scalar", "avx2", "avx512-vnni", "avx512-vnni-vbmi", "avx512-vnni-bf16", "avx512-vnni-bf16-vbmi"
    Isa isa;
    void (*quantize_activation)(GgmlType type, const float* x, int n, void* xq);
    float (*vec_dot)(GgmlType type, const void* row, const void* xq, int n);
    // y[r] = row r · x for r in [0, rows), row r starting at weights + r·row_stride.
    void (*gemv)(GgmlType type, const void* weights, size_t row_stride, int rows, const void* xq,
                 int n, float* y);
};

// The variant of an instruction set (for avx512: with BF16 dot products when the CPU has
// avx512_bf16). Throws std::invalid_argument when the CPU or the build cannot run it.
const QuantKernels& quant_kernels(Isa isa);
// The variant of active_isa(): cheap enough to call once per token (it follows set_active_isa).
inline const QuantKernels& quant_kernels() { return quant_kernels(active_isa()); }
// Every variant this CPU and build can run, slowest first (tests run each of them).
std::vector<const QuantKernels*> quant_kernel_variants();

// Scalar, not dispatched: the weights of a row as floats (tests, tools).
void dequantize_row(GgmlType type, const void* row, int n, float* y);

namespace ref {
void quantize_activation(GgmlType type, const float* x, int n, void* xq);
float vec_dot(GgmlType type, const void* row, const void* xq, int n);
void gemv(GgmlType type, const void* weights, size_t row_stride, int rows, const void* xq, int n,
          float* y);
}  // namespace ref

const QuantKernels& scalar_quant_kernels();
#if NUMATUNE_X86_VARIANTS
const QuantKernels& avx2_quant_kernels();
// VNNI; BF16 rows with vdpbf16ps (bf16_dot) or in f32 arithmetic; the legacy types four blocks
// per step with AVX512-VBMI (vbmi), else two.
const QuantKernels& avx512_quant_kernels(bool bf16_dot, bool vbmi);
#endif

}  // namespace numatune
