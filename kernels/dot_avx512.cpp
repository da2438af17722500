// AVX-512 variant of the row kernels (quant.h); compiled with -mavx512f/bw/vl/dq/vnni/bf16 and
// run only where CPUID allows. What differs from dot_avx2.cpp:
//
//  * vpdpbusd (VNNI) multiplies unsigned weight bytes by signed activation bytes and adds groups
//    of four straight into 32-bit lanes, replacing vpmaddubsw + vpmaddwd and their 16-bit range.
//    A sub-block's scale is then applied by vpdpwssd, which multiplies and accumulates in one
//    instruction: each lane of a vpdpbusd sum fits in 16 bits (at most 4·63·127) and the scale
//    lane holds the scale in its low 16 bits and zero above, so the "pair sum" it computes is
//    exactly value × scale.
//  * Q4_K and Q8_0 read the activation in a layout made once per gemv call (a few KiB, in L1):
//    Q4_K's x reordered so that one 512-bit load of nibbles (four sub-blocks) meets x with one
//    load per nibble half; Q8_0's blocks paired so that one vpdpbusd covers two of them. On a
//    Sapphire Rapids-class core (2.6 GHz TSC), in L2: Q4_K 23.6 → 16.2 and Q8_0 3.7 → 2.8 cycles
//    a block; from 2 GiB of rows, against the bandwidth benchmark's read loop in the same
//    process, Q4_K 0.69 → 0.81, Q8_0 0.79 → 0.84 (one stream; see gemv_two_streams for more).
//  * Q6_K assembles 64 six-bit values per 512-bit step, lined up with 64 contiguous activation
//    bytes.
//  * Q2_K, Q3_K, Q5_K and IQ4_XS: 64 weights per vpdpbusd as well, against activations laid out
//    once per call (Q5_K on Q4_K's); the legacy types, IQ4_NL and MXFP4 four blocks per step where the
//    CPU has AVX512-VBMI (vpermt2b gathers their bytes; the "-vbmi" variants), else two. In L2,
//    one core of the AMD VM of docs/benchmarks.md (2026-12-07): Q2_K 13.7 → 18.2, Q5_K 22 → 27,
//    IQ4_XS 15 → 30, Q4_1 21 → 28 GB/s; from memory see that page.
//  * BF16 rows: with avx512_bf16, vdpbf16ps. It takes both operands in bf16, so x is split once
//    per gemv into x_hi = bf16(x) and x_lo = bf16(x − x_hi) and each row is dotted with both:
//    products of bf16 values are exact in f32, and x keeps about 16 significant bits, so the
//    result stays within float rounding of the f32 path (which the other table uses).
//
// Tested against quant_ref.cpp on AVX-512 hardware when present, and on any AVX2 host under
// SIMDe's emulation of these instructions (tests/test_quant.py).
#if NUMATUNE_X86_VARIANTS

// GCC 12's AVX-512 headers build their unmasked intrinsics on a deliberately uninitialised
// pass-through vector, which -Wall reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "quant.h"
#include "quant_iq.h"

namespace numatune {
namespace {

#include "dot_x86_prefetch.h"   // Reach, prefetch_line, prefetch_block

float hsum(__m128 v) {
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

float hsum(__m256 v) { return hsum(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1))); }

float hsum(__m512 v) { return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))); }

float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

__m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
__m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// A loaded value kept in a register. GCC folds a load into each instruction that uses the value
// (a memory operand is "free" in its cost model), so a vector used twice is loaded twice; on Zen 4,
// which does one 512-bit load a cycle, those loads were what bound the legacy kernels. The empty
// asm makes the value opaque, so it is loaded once and read from the register.
template <class Vector>
inline __attribute__((always_inline)) Vector in_register(Vector v) {
#if defined(__AVX512F__)   // (under SIMDe's emulation a vector is a struct in memory)
    asm("" : "+v"(v));
#endif
    return v;
}

// The 256-bit kernels shared with dot_avx2.cpp, here with vpdpbusd/vpdpwssd (AVX512-VL VNNI) for
// the products; none of them runs here any more (Q2_K, Q3_K, Q5_K, IQ4_XS and the legacy types
// have 512-bit kernels below), but for the tail blocks of legacy rows (n % 128 ≠ 0).
#define NUMATUNE_DOT_VNNI 1
#include "dot_x86_blocks.h"
#include "dot_x86_iq.h"        // IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ3_XXS, IQ2_S, IQ3_S, MXFP4

// ---- activation (bit-identical to the reference: same scale, same products, ties to even)

float max_magnitude(const float* x, int n) {
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    const __m256 m8 = _mm256_max_ps(_mm512_castps512_ps256(amax), _mm512_extractf32x8_ps(amax, 1));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// 16 floats → 16 int32 rounded ties-to-even (the values are within ±127).
__m512i round_16(const float* x, __m512 inverse) {
    return _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inverse)),
                            _mm512_set1_epi32(-127));
}

void store_16(int8_t* q, __m512i values) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(values));
}

void quantize_q8_k(const float* x, int n, BlockQ8K* y) {
    for (int b = 0; b < n / kQK; ++b, x += kQK) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQK));
        const __m512 inverse = _mm512_set1_ps(scale.inverse);
        y[b].d = scale.d;
        for (int g = 0; g < kQK / 16; ++g) {
            const __m512i q = round_16(x + 16 * g, inverse);
            store_16(y[b].qs + 16 * g, q);
            y[b].bsums[g] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
        }
    }
}

void quantize_q8_0(const float* x, int n, BlockQ8_0* y) {
    for (int b = 0; b < n / kQ8; ++b, x += kQ8) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQ8));
        const __m512 inverse = _mm512_set1_ps(scale.inverse);
        y[b].d = f32_to_f16(scale.d);
        store_16(y[b].qs, round_16(x, inverse));
        store_16(y[b].qs + 16, round_16(x + 16, inverse));
    }
}

void quantize_q8_1(const float* x, int n, BlockQ8_1* y) {
    for (int b = 0; b < n / kQ8; ++b, x += kQ8) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQ8));
        const __m512 inverse = _mm512_set1_ps(scale.inverse);
        y[b].d = f32_to_f16(scale.d);
        const __m512i low = round_16(x, inverse), high = round_16(x + 16, inverse);
        store_16(y[b].qs, low);
        store_16(y[b].qs + 16, high);
        y[b].sum = static_cast<int16_t>(_mm512_reduce_add_epi32(_mm512_add_epi32(low, high)));
    }
}

void quantize_activation(GgmlType type, const float* x, int n, void* xq) {
    switch (type_info(type).activation) {
        case ActivationFormat::f32: return ref::quantize_activation(type, x, n, xq);
        case ActivationFormat::q8_0: return quantize_q8_0(x, n, static_cast<BlockQ8_0*>(xq));
        case ActivationFormat::q8_1: return quantize_q8_1(x, n, static_cast<BlockQ8_1*>(xq));
        case ActivationFormat::q8_k: return quantize_q8_k(x, n, static_cast<BlockQ8K*>(xq));
    }
}

// ---- Q4_K × Q8_K

// The activation of a Q4_K gemv, laid out once per call for this kernel. A 512-bit load of 64
// bytes of Q4_K nibbles holds weights 0-31 and 64-95 of a 128-weight half in its low nibbles and
// 32-63 and 96-127 in its high ones; qs holds x in that order, so each vpdpbusd reads x with one
// load. pair_sums[s] is the sum of x over sub-block s (for the mins), d the activation's scale.
struct alignas(64) Q4KActivation {
    int8_t qs[kQK];
    int16_t pair_sums[8];
    float d;
};

void lay_out_q4k_activation(const BlockQ8K* x, int blocks, Q4KActivation* out) {
    for (int b = 0; b < blocks; ++b) {
        for (int half = 0; half < 2; ++half) {
            const int8_t* from = x[b].qs + 128 * half;
            int8_t* to = out[b].qs + 128 * half;
            std::memcpy(to, from, 32);
            std::memcpy(to + 32, from + 64, 32);
            std::memcpy(to + 64, from + 32, 32);
            std::memcpy(to + 96, from + 96, 32);
        }
        for (int s = 0; s < 8; ++s) {
            out[b].pair_sums[s] = static_cast<int16_t>(x[b].bsums[2 * s] + x[b].bsums[2 * s + 1]);
        }
        out[b].d = x[b].d;
    }
}

// vpshufb mask over those 16 bytes (broadcast to every 128-bit lane): 32-bit lanes 0-7 = sc[a],
// lanes 8-15 = sc[b], zero-extended, so that vpdpwssd on them multiplies by the scale exactly.
__m512i scale_pair_mask(int a, int b) {
    return _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(0x80808000 | a), _mm512_set1_epi32(0x80808000 | b));
}

// m[0..7] widened to eight 16-bit words.
__m128i min_words_mask() { return _mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1); }

// Q4_K, and Q5_K (the same layout with a fifth bit per weight in qh; same activation layout).
// Q5_K's fifth bits are set by vptestmb on qh (in both 256-bit halves) and a byte-masked add of
// 16: a vpdpbusd lane then sums at most 4·31·127, still its own low 16 bits.
template <class Block>
struct Q4KLikeAccumulator {
    __m512 scaled = _mm512_setzero_ps();   // d·Σ sc·(q·x)
    __m128 mins = _mm_setzero_ps();        // dmin·Σ m·(Σx)

    // Byte pattern: bit a in the low 256 bits, bit b in the high ones.
    static __m512i bit_pair(int a, int b) {
        return _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << a)), _mm256_set1_epi8(static_cast<char>(1 << b)), 1);
    }

    void add(const Block& w, const Q4KActivation& x) {
        const __m128i packed = q4k_scales_and_mins(w);   // bytes 0-7: sc, 8-15: m
        uint32_t both;
        std::memcpy(&both, &w.d, sizeof both);
        const __m128 block_scales = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(both))), _mm_set1_ps(x.d));

        const __m128i min_terms = _mm_madd_epi16(_mm_shuffle_epi8(packed, min_words_mask()),
                                                 _mm_load_si128(reinterpret_cast<const __m128i*>(x.pair_sums)));
        mins = _mm_fmadd_ps(_mm_shuffle_ps(block_scales, block_scales, 0x55), _mm_cvtepi32_ps(min_terms), mins);

        const __m512i bytes = _mm512_broadcast_i32x4(packed);
        const __m512i low_nibbles = _mm512_set1_epi8(0x0f);
        __m512i sum = _mm512_setzero_si512();
        for (int half = 0; half < 2; ++half) {
            // Sub-blocks 4·half .. 4·half+3: low nibbles hold 4h and 4h+2, high nibbles 4h+1 and 4h+3.
            const __m512i q = load512(w.qs + 64 * half);
            __m512i lo = _mm512_and_si512(q, low_nibbles);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low_nibbles);
            if constexpr (std::is_same_v<Block, BlockQ5K>) {
                const __m512i qh = _mm512_broadcast_i64x4(load256(w.qh));
                const __m512i fifth = _mm512_set1_epi8(0x10);
                lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qh, bit_pair(4 * half, 4 * half + 2)), lo, fifth);
                hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(qh, bit_pair(4 * half + 1, 4 * half + 3)), hi, fifth);
            }
            const __m512i dot_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512(x.qs + 128 * half));
            const __m512i dot_hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, _mm512_load_si512(x.qs + 128 * half + 64));
            // Each lane of a vpdpbusd sum is within ±4·15·127, so it is its own low 16 bits.
            sum = _mm512_dpwssd_epi32(sum, dot_lo, _mm512_shuffle_epi8(bytes, scale_pair_mask(4 * half, 4 * half + 2)));
            sum = _mm512_dpwssd_epi32(sum, dot_hi, _mm512_shuffle_epi8(bytes, scale_pair_mask(4 * half + 1, 4 * half + 3)));
        }
        scaled = _mm512_fmadd_ps(_mm512_broadcastss_ps(block_scales), _mm512_cvtepi32_ps(sum), scaled);
    }

    float total() const { return hsum(scaled) - hsum(mins); }
};

// ---- Q6_K × Q8_K

// vpermd indices for 64 weights = groups 4k..4k+3: lanes 4t..4t+3 take element 4k+t.
__m512i group_quad(int k) {
    return _mm512_add_epi32(_mm512_set1_epi32(4 * k),
                            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
}

struct Q6KAccumulator {
    __m512 scaled = _mm512_setzero_ps();

    void add(const BlockQ6K& w, const BlockQ8K& x) {
        const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)));
        // The weights are dotted as unsigned 0..63; Σ sc·(q−32)·x = Σ sc·q·x − 32·Σ sc·bsum.
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, load256(x.bsums)), 5);
        __m512i sum = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_sub_epi32(_mm256_setzero_si256(), offset), 0);
        // Zero-extended, so that vpdpwssd sees the (signed) scale in the low half and 0 above.
        const __m512i scales = _mm512_cvtepu16_epi32(scales16);

        // 512 bits at a time: ql's 64 bytes of a half are q0's and q1's low nibbles (and q2's and
        // q3's high ones); qh's 32 bytes, in both 256-bit halves, are masked to the two bits each
        // quarter needs and shifted, per half, to bits 4-5 (vpsllvw/vpsrlvw), then or-ed in.
        const __m512i low_nibbles = _mm512_set1_epi8(0x0f);
        const __m512i first_bits = _mm512_inserti64x4(_mm512_set1_epi8(0x03), _mm256_set1_epi8(0x0c), 1);
        const __m512i second_bits = _mm512_inserti64x4(_mm512_set1_epi8(0x30), _mm256_set1_epi8(static_cast<char>(0xc0)), 1);
        const __m512i first_shift = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        const __m512i second_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        for (int h = 0; h < 2; ++h) {
            const __m512i l = load512(w.ql + 64 * h);
            const __m512i hb = _mm512_broadcast_i64x4(load256(w.qh + 32 * h));
            // (a & b) | c: vpternlogd 0xea
            const __m512i first = _mm512_ternarylogic_epi32(l, low_nibbles, _mm512_sllv_epi16(_mm512_and_si512(hb, first_bits), first_shift), 0xea);
            const __m512i second = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l, 4), low_nibbles,
                                                             _mm512_srlv_epi16(_mm512_and_si512(hb, second_bits), second_shift), 0xea);
            const __m512i dot_first = _mm512_dpbusd_epi32(_mm512_setzero_si512(), first, load512(x.qs + 128 * h));
            const __m512i dot_second = _mm512_dpbusd_epi32(_mm512_setzero_si512(), second, load512(x.qs + 128 * h + 64));
            sum = _mm512_dpwssd_epi32(sum, dot_first, _mm512_permutexvar_epi32(group_quad(2 * h), scales));
            sum = _mm512_dpwssd_epi32(sum, dot_second, _mm512_permutexvar_epi32(group_quad(2 * h + 1), scales));
        }
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(x.d * f16_scalar(w.d)), _mm512_cvtepi32_ps(sum), scaled);
    }

    float total() const { return hsum(scaled); }
};

// ---- Q2_K and Q3_K × Q8_K, 64 weights per vpdpbusd

// Q2_K reads all 64 bytes of qs with one load: run j of both halves (weights 32j.. and
// 128 + 32j..) per vector, against an activation laid out once per gemv in that order. Runs 2
// and 3 are not shifted down but masked in place (bits 4-5 of a byte: 16·q, a vpdpbusd lane then
// sums at most 4·48·127, still within 16 bits), and runs 0 and 1 get 16× their scales instead:
// everything is 16× the sum, undone by the float scale (exact, a power of two).
struct alignas(64) Q2KActivation {   // (Q3_K's too)
    int8_t qs[kQK];       // run j: bytes 64j..64j+31 = x[32j..], 64j+32..64j+63 = x[128 + 32j..]
    int16_t bsums[16];
    float d;
};

void lay_out_q2k_activation(const BlockQ8K* x, int blocks, Q2KActivation* out) {
    for (int b = 0; b < blocks; ++b) {
        for (int j = 0; j < 4; ++j) {
            std::memcpy(out[b].qs + 64 * j, x[b].qs + 32 * j, 32);
            std::memcpy(out[b].qs + 64 * j + 32, x[b].qs + 128 + 32 * j, 32);
        }
        std::memcpy(out[b].bsums, x[b].bsums, sizeof out[b].bsums);
        out[b].d = x[b].d;
    }
}

// vpermd indices of run j's scales: lanes 0-3 group 2j, 4-7 group 2j + 1, 8-11 group 8 + 2j,
// 12-15 group 9 + 2j.
inline __m512i run_groups(int j) {
    return _mm512_add_epi32(_mm512_set1_epi32(2 * j), _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 8, 8, 8, 8, 9, 9, 9, 9));
}

struct Q2KAccumulator512 {
    __m512 scaled = _mm512_setzero_ps();   // d·Σ sc·(q·x)
    __m256 mins = _mm256_setzero_ps();     // dmin·Σ m·(Σx)

    void add(const BlockQ2K& w, const Q2KActivation& x) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
        const __m128i low_nibbles = _mm_set1_epi8(0x0f);
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles));
        uint32_t both;
        std::memcpy(&both, &w.d, sizeof both);
        const __m128 block_scales = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(both))), _mm_set1_ps(x.d));
        mins = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_shuffle_ps(block_scales, block_scales, 0x55)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, load256(x.bsums))), mins);

        const __m512i scales = _mm512_cvtepu8_epi32(_mm_and_si128(packed, low_nibbles));
        const __m512i scales_x16 = _mm512_slli_epi32(scales, 4);
        const __m512i q = load512(w.qs), shifted = _mm512_srli_epi16(q, 2);
        const __m512i low_pair = _mm512_set1_epi8(0x03), high_pair = _mm512_set1_epi8(0x30);
        const __m512i runs[4] = {_mm512_and_si512(q, low_pair), _mm512_and_si512(shifted, low_pair),
                                 _mm512_and_si512(q, high_pair), _mm512_and_si512(shifted, high_pair)};
        __m512i sum = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), runs[j], _mm512_load_si512(x.qs + 64 * j));
            sum = _mm512_dpwssd_epi32(sum, dot, _mm512_permutexvar_epi32(run_groups(j), j < 2 ? scales_x16 : scales));
        }
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(_mm_cvtss_f32(block_scales) * 0.0625f), _mm512_cvtepi32_ps(sum), scaled);
    }

    float total() const { return hsum(scaled) - hsum(mins); }
};

// Q3_K as Q2_K (one load of qs, the same activation layout), dotted as unsigned u = q + 4 in
// 0..7: its third bit from hmask (bit j of byte l for run j of the first half, bit 4 + j for the
// second) by vptestmb and a byte-masked add of 4; Σ sc·(u − 4)·x = Σ sc·u·x − 4·Σ sc·bsum. A lane
// sums at most 4·7·127, so all four runs are shifted down (no 16× trick as for Q2_K).
struct Q3KAccumulator512 {
    __m512 scaled = _mm512_setzero_ps();

    void add(const BlockQ3K& w, const Q2KActivation& x) {
        const __m256i scales16 = _mm256_cvtepi8_epi16(q3k_scales(w));
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, load256(x.bsums)), 2);
        __m512i sum = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_sub_epi32(_mm256_setzero_si256(), offset), 0);
        const __m512i scales = _mm512_cvtepu16_epi32(scales16);   // signed scale in the low half, 0 above
        const __m512i hmask = _mm512_broadcast_i64x4(load256(w.hmask));
        const __m512i q = load512(w.qs);
        const __m512i two_bits = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
        for (int j = 0; j < 4; ++j) {
            const __m512i bits = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << j)),
                                                    _mm256_set1_epi8(static_cast<char>(1 << (4 + j))), 1);
            const __m512i low = _mm512_and_si512(_mm512_srli_epi16(q, 2 * j), two_bits);
            const __m512i values = _mm512_mask_add_epi8(low, _mm512_test_epi8_mask(hmask, bits), low, four);
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), values, _mm512_load_si512(x.qs + 64 * j));
            sum = _mm512_dpwssd_epi32(sum, dot, _mm512_permutexvar_epi32(run_groups(j), scales));
        }
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(x.d * f16_scalar(w.d)), _mm512_cvtepi32_ps(sum), scaled);
    }

    float total() const { return hsum(scaled); }
};

// ---- Q8_0 × Q8_0

// Two Q8_0 blocks (64 weights) per 512-bit vpdpbusd. vpdpbusd wants unsigned bytes on one side,
// so the weights are read as w + 128 (their sign bit flipped), and the activation's side of the
// pair carries −128·Σx per block, spread as −16·Σx over its eight lanes, as the starting value.
struct alignas(64) Q8_0PairActivation {
    int8_t qs[2 * kQ8];
    int32_t start[16];
};

void lay_out_q8_0_activation(const BlockQ8_0* x, int blocks, Q8_0PairActivation* pairs, float* scales) {
    for (int b = 0; b < blocks; ++b) {
        Q8_0PairActivation& pair = pairs[b / 2];
        const int half = b % 2;
        std::memcpy(pair.qs + kQ8 * half, x[b].qs, kQ8);
        int sum = 0;
        for (int i = 0; i < kQ8; ++i) sum += x[b].qs[i];
        for (int lane = 0; lane < 8; ++lane) pair.start[8 * half + lane] = -16 * sum;
        scales[b] = f16_scalar(x[b].d);
    }
}

struct Q8_0Accumulator {
    __m512 acc = _mm512_setzero_ps();

    // Blocks b and b+1 of a row (w points at block b), against their pair of the activation.
    void add_pair(const BlockQ8_0* w, const Q8_0PairActivation& x, const float* x_scales) {
        const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
        const __m512i pair_lanes = _mm512_mask_blend_epi32(0xff00, _mm512_setzero_si512(), _mm512_set1_epi32(1));
        const __m512i q = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(load256(w[0].qs)), load256(w[1].qs), 1), flip);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_load_si512(x.start), q, _mm512_load_si512(x.qs));
        const uint32_t both = w[0].d | static_cast<uint32_t>(w[1].d) << 16;
        const __m128 scales = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(both))),
                                         _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(x_scales))));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pair_lanes, _mm512_castps128_ps512(scales)), acc);
    }

    // An odd last block: the low half of the same step.
    void add_last(const BlockQ8_0& w, const Q8_0PairActivation& x, float x_scale) {
        const __m256i q = _mm256_xor_si256(load256(w.qs), _mm256_set1_epi8(static_cast<char>(0x80)));
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(x.start)), q,
                                                _mm256_load_si256(reinterpret_cast<const __m256i*>(x.qs)));
        const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(f16_scalar(w.d) * x_scale));
        acc = _mm512_add_ps(acc, _mm512_insertf32x8(_mm512_setzero_ps(), scaled, 0));
    }

    float total() const { return hsum(acc); }
};

// Rows read in two streams: row r and row r + rows/2 advance together, step by step. One core
// reads memory faster with two far-apart streams in flight than with one (the hardware
// prefetcher follows each). On the AVX-512 machine above, from 2 GiB of rows, against the read
// loop of the bandwidth benchmark in the same process: Q4_K 0.81-0.84 → 0.91-0.95 of its speed,
// Q6_K 0.82-0.84 → 0.90-0.94; four streams measured no better than two. A row's sum is formed
// as it would be alone, so the result does not depend on how rows are split over workers.
// step(acc, row, i) adds step i of a row; finish(acc, row) returns its dot product.
template <class Acc, class Step, class Finish>
inline __attribute__((always_inline)) void gemv_two_streams(int rows, int steps, Step step, Finish finish, float* y) {
    const int half = rows / 2;
    for (int r = 0; r < half; ++r) {
        Acc first, second;
        for (int i = 0; i < steps; ++i) {
            step(first, r, i);
            step(second, r + half, i);
        }
        y[r] = finish(first, r);
        y[r + half] = finish(second, r + half);
    }
    if (rows % 2 != 0) {
        Acc last;
        for (int i = 0; i < steps; ++i) step(last, rows - 1, i);
        y[rows - 1] = finish(last, rows - 1);
    }
}

// Whether the activation differs from the one this thread last laid out. A gemv keeps its
// layout (thread_local) for as long as the same activation bytes come back: the engine dots one
// activation with every unit of gate and up rows (as few as 32 rows at a time, see engine.cpp),
// where laying it out anew each call cost as much as the dot products. Compared by content, so
// any caller gets a correct layout.
struct LastActivation {
    std::vector<uint8_t> bytes;

    bool changed(const void* xq, size_t size) {
        if (bytes.size() == size && std::memcmp(bytes.data(), xq, size) == 0) return false;
        bytes.assign(static_cast<const uint8_t*>(xq), static_cast<const uint8_t*>(xq) + size);
        return true;
    }
};

void gemv_q8_0(const uint8_t* weights, size_t row_stride, int rows, const BlockQ8_0* x, int blocks, float* y) {
    thread_local LastActivation last;
    thread_local std::vector<Q8_0PairActivation> laid_out;   // grows once per thread
    thread_local std::vector<float> scales;
    if (last.changed(x, sizeof(BlockQ8_0) * blocks)) {
        laid_out.resize(static_cast<size_t>(blocks + 1) / 2);
        scales.resize(static_cast<size_t>(blocks));
        lay_out_q8_0_activation(x, blocks, laid_out.data(), scales.data());
    }
    const Q8_0PairActivation* pairs = laid_out.data();
    const float* x_scales = scales.data();
    auto row = [&](int r) { return reinterpret_cast<const BlockQ8_0*>(weights + r * row_stride); };
    gemv_two_streams<Q8_0Accumulator>(
        rows, blocks / 2,
        [&](Q8_0Accumulator& acc, int r, int p) {
            const BlockQ8_0* w = row(r) + 2 * p;
            prefetch_block<Reach::kFar>(w);
            prefetch_block<Reach::kFar>(w + 1);
            acc.add_pair(w, pairs[p], x_scales + 2 * p);
        },
        [&](Q8_0Accumulator& acc, int r) {
            if (blocks % 2 != 0) {
                const BlockQ8_0* w = row(r) + (blocks - 1);
                prefetch_block<Reach::kFar>(w);
                acc.add_last(*w, pairs[blocks / 2], x_scales[blocks - 1]);
            }
            return acc.total();
        },
        y);
}

// Rows of whole blocks (Q4_K, Q6_K, the laid-out types below), each block's bytes prefetched as
// kReach says (running on into the next row, which is where that stream reads next).
template <class Acc, class Block, Reach kReach = Reach::kNear, class Activation>
void gemv_blocks(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
    auto row = [&](int r) { return reinterpret_cast<const Block*>(weights + r * row_stride); };
    gemv_two_streams<Acc>(
        rows, blocks,
        [&](Acc& acc, int r, int b) {
            const Block* w = row(r) + b;
            prefetch_block<kReach>(w);
            acc.add(*w, x[b]);
        },
        [](Acc& acc, int) { return acc.total(); }, y);
}

// Rows of a K-quant type whose kernel reads the Q8_K activation as lay_out writes it (one LaidOut
// per block), kept per thread and per kernel for as long as the same activation comes back.
template <class Acc, class Block, class LaidOut, void (*kLayOut)(const BlockQ8K*, int, LaidOut*),
          Reach kReach = Reach::kNear>
void gemv_laid_out(const uint8_t* weights, size_t row_stride, int rows, const BlockQ8K* x, int blocks, float* y) {
    thread_local LastActivation last;
    thread_local std::vector<LaidOut> laid_out;   // grows once per thread
    if (last.changed(x, sizeof(BlockQ8K) * blocks)) {
        laid_out.resize(static_cast<size_t>(blocks));
        kLayOut(x, blocks, laid_out.data());
    }
    gemv_blocks<Acc, Block, kReach>(weights, row_stride, rows, laid_out.data(), blocks, y);
}

// ---- IQ4_XS × Q8_K

// 64 bytes of IQ4_XS nibbles hold four sub-blocks of 32 weights, 16 bytes each: weights 0-15 of a
// sub-block in the low nibbles, 16-31 in the high ones. The activation is laid out once per gemv
// so that each nibble half meets x with one load (128-bit lane t: sub-block 4h + t). Grid values
// g are dotted as unsigned u = g + 128 (the grid's bytes with the sign bit flipped), and
// −128·Σx of a sub-block starts its four lanes (−32·Σx each). A lane then sums eight products up
// to 127·127 in magnitude, more than vpdpwssd's 16 bits: the sub-block scale is applied by vpmulld.
struct alignas(64) IQ4XSActivation {
    int8_t low[2][64];     // [h] bytes 16t..16t+15: x[32(4h + t) + 0..15]
    int8_t high[2][64];    // x[32(4h + t) + 16..31]
    int32_t start[2][16];  // lanes 4t..4t+3: −32·Σx over sub-block 4h + t
    float d;
};

void lay_out_iq4xs_activation(const BlockQ8K* x, int blocks, IQ4XSActivation* out) {
    for (int b = 0; b < blocks; ++b) {
        for (int sub = 0; sub < 8; ++sub) {
            const int h = sub / 4, t = sub % 4;
            std::memcpy(out[b].low[h] + 16 * t, x[b].qs + 32 * sub, 16);
            std::memcpy(out[b].high[h] + 16 * t, x[b].qs + 32 * sub + 16, 16);
            const int sum = x[b].bsums[2 * sub] + x[b].bsums[2 * sub + 1];
            for (int k = 0; k < 4; ++k) out[b].start[h][4 * t + k] = -32 * sum;
        }
        out[b].d = x[b].d;
    }
}

struct IQ4XSAccumulator512 {
    __m512 scaled = _mm512_setzero_ps();

    void add(const BlockIQ4XS& w, const IQ4XSActivation& x) {
        const __m128i scales8 = iq4xs_scales8(w);
        const __m512i scales32 = _mm512_castsi256_si512(_mm256_cvtepi8_epi32(scales8));
        const __m512i grid = _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)),
                                                                  _mm_set1_epi8(static_cast<char>(0x80))));
        const __m512i low_nibbles = _mm512_set1_epi8(0x0f);
        __m512i sum = _mm512_setzero_si512();
        for (int h = 0; h < 2; ++h) {
            const __m512i q = load512(w.qs + 64 * h);
            const __m512i low = _mm512_shuffle_epi8(grid, _mm512_and_si512(q, low_nibbles));
            const __m512i high = _mm512_shuffle_epi8(grid, _mm512_and_si512(_mm512_srli_epi16(q, 4), low_nibbles));
            __m512i dot = _mm512_dpbusd_epi32(_mm512_load_si512(x.start[h]), low, _mm512_load_si512(x.low[h]));
            dot = _mm512_dpbusd_epi32(dot, high, _mm512_load_si512(x.high[h]));
            // lanes 4t..4t+3: the scale of sub-block 4h + t
            sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(dot, _mm512_permutexvar_epi32(group_quad(h), scales32)));
        }
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(x.d * f16_scalar(w.d)), _mm512_cvtepi32_ps(sum), scaled);
    }

    float total() const { return hsum(scaled); }
};

// ---- legacy blocks (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), two per step (without AVX512-VBMI)

// The 256-bit kernels of dot_x86_blocks.h spend, per 32-weight block, as much on its two f16
// scales, conversion and float accumulation as on its products. Here two blocks share one 512-bit
// vpdpbusd, one scale conversion and one FMA, against an activation laid out in pairs once per
// gemv (as Q8_0's above). Every weight is dotted as an unsigned byte u = q + bias, where q is the
// weight's integer (q − 8 for Q4_0, a grid value for IQ4_NL): Σ q·x = Σ u·x − bias·Σx, and
// −bias·Σx starts each block's eight lanes (bias/8 · Σx each; every bias here is a multiple of 8).
// scales = (dx of the two blocks, dx·Σx of the two blocks): × (d, d, m, m) of the weights gives
// both blocks' factors and, for Q4_1 and Q5_1 (w = d·q + m), their offset terms.
struct alignas(64) LegacyPairActivation {
    int8_t qs[2 * kQ8];
    int32_t start[16];
    float scales[4];
};

template <class Block> constexpr bool kHasMin = std::is_same_v<Block, BlockQ4_1> || std::is_same_v<Block, BlockQ5_1>;
template <class Block> constexpr bool kHasFifthBit = std::is_same_v<Block, BlockQ5_0> || std::is_same_v<Block, BlockQ5_1>;

// u − q for each type: Q4_0 stores q + 8 and Q5_0 q + 16; IQ4_NL's grid is shifted by 128.
template <class Block>
constexpr int legacy_bias() {
    if constexpr (std::is_same_v<Block, BlockQ4_0>) return 8;
    else if constexpr (std::is_same_v<Block, BlockQ5_0>) return 16;
    else if constexpr (std::is_same_v<Block, BlockIQ4NL> || std::is_same_v<Block, BlockMXFP4>) return 128;
    else return 0;
}

template <class Block, class Activation>
void lay_out_legacy_activation(const Activation* x, int blocks, LegacyPairActivation* pairs) {
    for (int b = 0; b < blocks; ++b) {
        LegacyPairActivation& pair = pairs[b / 2];
        const int half = b % 2;
        std::memcpy(pair.qs + kQ8 * half, x[b].qs, kQ8);
        int sum = 0;
        for (int i = 0; i < kQ8; ++i) sum += x[b].qs[i];
        for (int lane = 0; lane < 8; ++lane) pair.start[8 * half + lane] = -legacy_bias<Block>() / 8 * sum;
        const float dx = f16_scalar(x[b].d);
        pair.scales[half] = dx;
        pair.scales[2 + half] = dx * static_cast<float>(sum);
    }
    if (blocks % 2 != 0) {   // an odd last block: its pair's second half adds nothing
        LegacyPairActivation& pair = pairs[blocks / 2];
        std::memset(pair.qs + kQ8, 0, kQ8);
        for (int lane = 8; lane < 16; ++lane) pair.start[lane] = 0;
        pair.scales[1] = pair.scales[3] = 0;
    }
}

// The 64 unsigned values u of blocks a and b, in weight order (a's 32, then b's).
template <class Block>
__m512i legacy_pair_values(const Block& a, const Block& b) {
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.qs))),
                                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)), 1);
    // 128-bit lanes qs_a, qs_a, qs_b, qs_b; low nibbles of the first of each, high of the second.
    const __m512i spread = _mm512_shuffle_i64x2(_mm512_castsi256_si512(both), _mm512_castsi256_si512(both), 0x50);
    __m512i values = _mm512_and_si512(_mm512_mask_blend_epi64(0xcc, spread, _mm512_srli_epi16(spread, 4)),
                                      _mm512_set1_epi8(0x0f));
    if constexpr (std::is_same_v<Block, BlockIQ4NL>) {
        const __m512i grid = _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)),
                                                                  _mm_set1_epi8(static_cast<char>(0x80))));
        values = _mm512_shuffle_epi8(grid, values);
    }
    if constexpr (kHasFifthBit<Block>) {
        uint32_t low, high;
        std::memcpy(&low, a.qh, sizeof low);
        std::memcpy(&high, b.qh, sizeof high);
        const __mmask64 fifth = low | static_cast<uint64_t>(high) << 32;
        values = _mm512_mask_add_epi8(values, fifth, values, _mm512_set1_epi8(0x10));
    }
    return values;
}

template <class Block>
struct LegacyPairAccumulator {
    __m512 scaled = _mm512_setzero_ps();
    __m128 offsets = _mm_setzero_ps();   // lanes 2, 3: m·dx·Σx (Q4_1, Q5_1)

    // Blocks a and b of a row (b = a for an odd last block: its half of x is zero).
    void add_pair(const Block& a, const Block& b, const LegacyPairActivation& x) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_load_si512(x.start), legacy_pair_values(a, b), _mm512_load_si512(x.qs));
        uint64_t halves = a.d | static_cast<uint64_t>(b.d) << 16;
        if constexpr (kHasMin<Block>) halves |= static_cast<uint64_t>(a.m) << 32 | static_cast<uint64_t>(b.m) << 48;
        const __m128 factors = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(halves))), _mm_load_ps(x.scales));
        const __m512i pair_lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        scaled = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pair_lanes, _mm512_castps128_ps512(factors)), scaled);
        if constexpr (kHasMin<Block>) offsets = _mm_add_ps(offsets, factors);
    }

    float total() const {
        float sum = hsum(scaled);
        if constexpr (kHasMin<Block>) sum += _mm_cvtss_f32(_mm_add_ss(_mm_movehl_ps(offsets, offsets),
                                                                      _mm_shuffle_ps(offsets, offsets, 0xff)));
        return sum;
    }
};

template <class Block, class Activation>
void gemv_legacy_pairs(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
    thread_local LastActivation last;                          // one per type: the layout depends on its bias
    thread_local std::vector<LegacyPairActivation> laid_out;   // grows once per thread
    if (last.changed(x, sizeof(Activation) * blocks)) {
        laid_out.resize(static_cast<size_t>(blocks + 1) / 2);
        lay_out_legacy_activation<Block>(x, blocks, laid_out.data());
    }
    const LegacyPairActivation* pairs = laid_out.data();
    auto row = [&](int r) { return reinterpret_cast<const Block*>(weights + r * row_stride); };
    using Acc = LegacyPairAccumulator<Block>;
    gemv_two_streams<Acc>(
        rows, blocks / 2,
        [&](Acc& acc, int r, int p) {
            const Block* w = row(r) + 2 * p;
            // One line per pair: a pair (36-48 bytes) is shorter than a line, so every line is met.
            // (kFar measured slower here for Q4_0 and IQ4_NL: 0.62-0.67 → 0.55-0.57 of read.)
            prefetch_line<Reach::kNear>(w);
            acc.add_pair(w[0], w[1], pairs[p]);
        },
        [&](Acc& acc, int r) {
            if (blocks % 2 != 0) {
                const Block& w = row(r)[blocks - 1];
                acc.add_pair(w, w, pairs[blocks / 2]);
            }
            return acc.total();
        },
        y);
}

// ---- legacy blocks (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) and MXFP4, four per step (with AVX512-VBMI)
//
// Compiled for AVX512-VBMI in this region only, and run only where CPUID reports it (the
// "-vbmi" variants): Cascade Lake and Cooper Lake have AVX-512 VNNI without VBMI.
// (Not under the tests' SIMDe emulation, built for AVX2: its portable code must not turn native.)
#if defined(__AVX512F__)
#pragma GCC push_options
#pragma GCC target("avx512vbmi")
#endif

// Per 32-weight block, these types carry one or two f16 scales: dotted a block or two at a time,
// the scale conversion, float multiply-add and the gathering of the block's bytes cost as much as
// the products. Here four consecutive blocks (72-96 bytes) are read with two overlapping 512-bit
// loads, and vpermt2b (AVX512-VBMI) gathers from them in one instruction each: the four blocks'
// nibbles (128-bit lane t = block t), and in a second vector their d words (each four times, so
// that one vcvtph2ps gives every lane its block's scale), m beside them, and for Q5_0/Q5_1 the qh
// bytes as two 64-lane masks of fifth bits (vpmultishiftqb moves each lane's bit to 16, one
// vpternlogd adds it: in L2 this measured as fast as two more vpermt2b and vptestmb, or masks
// moved through general registers, each about 24 GB/s where the nibbles alone give 34). Every
// weight is dotted as an unsigned byte u = q + bias, where q is the weight's integer (q − 8 for
// Q4_0, a grid value for IQ4_NL and MXFP4): Σ q·x = Σ u·x − bias·Σx, and −bias·Σx of a block
// starts its four lanes (bias/4·Σx each). MXFP4's scale is one E8M0 byte e, gathered into each
// of its block's lanes and applied as dx·2^(e − 128) by vscalefps (in L2, one core of the Zen 4
// VM: 13.3 GB/s with dot_x86_iq.h's 256-bit kernel → 24.8; from memory 13.1 → 21.6). The activation is laid out once per gemv to match: the low 16 and
// high 16 activation bytes of each of the four blocks, the starts, dx in each block's lanes, and
// dx·Σx for Q4_1's and Q5_1's m·dx·Σx. Blocks past the last four (rows of n % 128 ≠ 0) are
// dotted by the 256-bit kernels of dot_x86_blocks.h against the activation as it is.
struct alignas(64) ByteTable {
    uint8_t bytes[64];
};

// vpermt2b indices over the bytes of four blocks: table byte i < 64 is byte i of the first load
// (at the quad's start), i ≥ 64 byte i − 64 of the second (at kSecond, so that it ends with the
// quad: nothing past the four blocks is read). Byte offsets within a block: d at 0, m at 2
// (Q4_1, Q5_1), qh before qs, qs the last 16 bytes.
template <class Block>
struct LegacyQuadLayout {
    static constexpr int kSize = static_cast<int>(sizeof(Block));
    static constexpr int kSecond = 4 * kSize - 64;
    static constexpr int kQs = kSize - 16;
    static constexpr int kQh = kQs - 4;

    static constexpr uint8_t at(int address) { return static_cast<uint8_t>(address < 64 ? address : 64 + address - kSecond); }

    static constexpr ByteTable nibbles() {   // byte 16t + i: qs[i] of block t
        ByteTable table{};
        for (int t = 0; t < 4; ++t)
            for (int i = 0; i < 16; ++i) table.bytes[16 * t + i] = at(kSize * t + kQs + i);
        return table;
    }
    // Words 4t..4t+3: d of block t; words 16 + t: m of block t (Q4_1, Q5_1); bytes 48 + 2t + k
    // and 56 + 2t + k: qh bytes k and 2 + k of block t (Q5_0, Q5_1), so that the table's last two
    // quadwords are the fifth-bit masks of the low and the high nibbles, lane 16t + i for weight
    // i (resp. 16 + i) of block t.
    static constexpr ByteTable scales() {
        ByteTable table{};
        for (int t = 0; t < 4; ++t) {
            for (int k = 0; k < 4; ++k) {
                if constexpr (std::is_same_v<Block, BlockMXFP4>) {   // dwords 4t..4t+3: e of block t
                    table.bytes[16 * t + 4 * k] = at(kSize * t);
                    continue;
                }
                table.bytes[8 * t + 2 * k] = at(kSize * t);
                table.bytes[8 * t + 2 * k + 1] = at(kSize * t + 1);
            }
            if constexpr (std::is_same_v<Block, BlockMXFP4>) continue;
            table.bytes[32 + 2 * t] = at(kSize * t + (kHasMin<Block> ? 2 : 0));
            table.bytes[33 + 2 * t] = at(kSize * t + (kHasMin<Block> ? 3 : 1));
            for (int k = 0; k < 2; ++k) {
                table.bytes[48 + 2 * t + k] = at(kSize * t + (kHasFifthBit<Block> ? kQh + k : 0));
                table.bytes[56 + 2 * t + k] = at(kSize * t + (kHasFifthBit<Block> ? kQh + 2 + k : 0));
            }
        }
        return table;
    }

    static constexpr ByteTable kNibbles = nibbles();
    static constexpr ByteTable kScales = scales();
};

// vpmultishiftqb controls: byte j of quadword k reads the 8 bits from bit 8k + j − 4 (mod 64) of
// a quadword holding a 64-lane mask, so that the mask bit of lane 8k + j lands in the byte's bit 4
// (a fifth bit's weight, 16).
constexpr ByteTable fifth_bit_select() {
    ByteTable table{};
    for (int i = 0; i < 64; ++i) table.bytes[i] = static_cast<uint8_t>((i + 60) % 64);
    return table;
}
constexpr ByteTable kFifthBitSelect = fifth_bit_select();

struct alignas(64) LegacyQuadActivation {
    int8_t low[64];      // bytes 16t..16t+15: x[0..15] of block t
    int8_t high[64];     // x[16..31] of block t
    int32_t start[16];   // lanes 4t..4t+3: −bias/4 · Σx of block t
    float scales[16];    // lanes 4t..4t+3: dx of block t
    float sums[4];       // dx·Σx of block t
};

// One step's activation in registers, loaded once for both streams' rows (GCC otherwise reads
// it from memory once per row, as instruction operands: 512-bit loads were what bound the loop).
struct LegacyQuadX {
    __m512i start, low, high;
    __m512 scales;
    __m128 sums;

    explicit LegacyQuadX(const LegacyQuadActivation& x)
        : start(in_register(_mm512_load_si512(x.start))), low(in_register(_mm512_load_si512(x.low))),
          high(in_register(_mm512_load_si512(x.high))), scales(in_register(_mm512_load_ps(x.scales))),
          sums(_mm_load_ps(x.sums)) {}
};

template <class Block, class Activation>
void lay_out_legacy_activation(const Activation* x, int quads, LegacyQuadActivation* out) {
    for (int q = 0; q < quads; ++q) {
        for (int t = 0; t < 4; ++t) {
            const Activation& block = x[4 * q + t];
            std::memcpy(out[q].low + 16 * t, block.qs, 16);
            std::memcpy(out[q].high + 16 * t, block.qs + 16, 16);
            int sum = 0;
            for (int i = 0; i < kQ8; ++i) sum += block.qs[i];
            const float dx = f16_scalar(block.d);
            for (int k = 0; k < 4; ++k) {
                out[q].start[4 * t + k] = -legacy_bias<Block>() / 4 * sum;
                out[q].scales[4 * t + k] = dx;
            }
            out[q].sums[t] = dx * static_cast<float>(sum);
        }
    }
}

template <class Block>
struct LegacyQuadAccumulator {
    using Layout = LegacyQuadLayout<Block>;
    __m512 scaled = _mm512_setzero_ps();
    __m128 offsets = _mm_setzero_ps();   // m·dx·Σx (Q4_1, Q5_1)

    static __m512i table(const ByteTable& t) { return _mm512_load_si512(t.bytes); }

    // Blocks 4q..4q+3 of a row (w points at the first).
    void add(const Block* w, const LegacyQuadX& x) {
        const auto* bytes = reinterpret_cast<const uint8_t*>(w);
        const __m512i first = in_register(load512(bytes)), second = in_register(load512(bytes + Layout::kSecond));
        const __m512i qs = _mm512_permutex2var_epi8(first, table(Layout::kNibbles), second);
        const __m512i low_nibbles = _mm512_set1_epi8(0x0f);
        __m512i low = _mm512_and_si512(qs, low_nibbles);
        __m512i high = _mm512_and_si512(_mm512_srli_epi16(qs, 4), low_nibbles);
        if constexpr (std::is_same_v<Block, BlockIQ4NL> || std::is_same_v<Block, BlockMXFP4>) {
            const int8_t* values = std::is_same_v<Block, BlockIQ4NL> ? kIq4Values : kMxfp4Values;
            const __m512i grid = _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values)),
                                                                      _mm_set1_epi8(static_cast<char>(0x80))));
            low = _mm512_shuffle_epi8(grid, low);
            high = _mm512_shuffle_epi8(grid, high);
        }
        const __m512i words = _mm512_permutex2var_epi8(first, table(Layout::kScales), second);
        if constexpr (kHasFifthBit<Block>) {
            // The masks (quadwords 6 and 7 of words) broadcast, their bits moved to bit 4 of each
            // lane's byte, and or-ed in where set: u | (bits & 16), one vpternlogd.
            const __m512i select = table(kFifthBitSelect), sixteen = _mm512_set1_epi8(0x10);
            const __m512i low_bits = _mm512_multishift_epi64_epi8(select, _mm512_permutexvar_epi64(_mm512_set1_epi64(6), words));
            const __m512i high_bits = _mm512_multishift_epi64_epi8(select, _mm512_permutexvar_epi64(_mm512_set1_epi64(7), words));
            low = _mm512_ternarylogic_epi32(low, low_bits, sixteen, 0xf8);
            high = _mm512_ternarylogic_epi32(high, high_bits, sixteen, 0xf8);
        }
        __m512i dot = _mm512_dpbusd_epi32(x.start, low, x.low);
        dot = _mm512_dpbusd_epi32(dot, high, x.high);
        __m512 factors;
        if constexpr (std::is_same_v<Block, BlockMXFP4>) {
            // dx · 2^(e − 128), exact (vscalefps scales by a power of two, subnormals included),
            // as dx · e8m0_half(e) in the reference.
            const __m512i e = _mm512_and_si512(words, _mm512_set1_epi32(0xff));
            factors = _mm512_scalef_ps(x.scales, _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(128))));
        } else {
            factors = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(words)), x.scales);
        }
        scaled = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), factors, scaled);
        if constexpr (kHasMin<Block>) {
            offsets = _mm_fmadd_ps(_mm_cvtph_ps(_mm512_extracti32x4_epi32(words, 2)), x.sums, offsets);
        }
    }

    float total() const { return kHasMin<Block> ? hsum(scaled) + hsum(offsets) : hsum(scaled); }
};

// The 256-bit kernel of dot_x86_blocks.h for the blocks past the last four of a row.
template <class Block>
auto legacy_tail_accumulator() {
    if constexpr (std::is_same_v<Block, BlockQ4_0>) return Q4_0Accumulator{};
    else if constexpr (std::is_same_v<Block, BlockQ5_0>) return Q5_0Accumulator{};
    else if constexpr (std::is_same_v<Block, BlockIQ4NL>) return IQ4NLAccumulator{};
    else if constexpr (std::is_same_v<Block, BlockMXFP4>) return MXFP4Accumulator{};
    else if constexpr (std::is_same_v<Block, BlockQ4_1>) return Q4_1Accumulator{};
    else return Q5_1Accumulator{};
}

template <class Block, class Activation>
void gemv_legacy_quads(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
    const int quads = blocks / 4;
    thread_local LastActivation last;                          // one per type: the layout depends on its bias
    thread_local std::vector<LegacyQuadActivation> laid_out;   // grows once per thread
    if (last.changed(x, sizeof(Activation) * blocks)) {
        laid_out.resize(static_cast<size_t>(quads));
        lay_out_legacy_activation<Block>(x, quads, laid_out.data());
    }
    const LegacyQuadActivation* activation = laid_out.data();
    auto row = [&](int r) { return reinterpret_cast<const Block*>(weights + r * row_stride); };
    using Acc = LegacyQuadAccumulator<Block>;
    auto step = [&](Acc& acc, int r, int q, const LegacyQuadX& xq) {
        const Block* w = row(r) + 4 * q;
        // Four blocks span 72-96 bytes: two lines cover every line they touch.
        prefetch_line<Reach::kFar>(w);
        prefetch_line<Reach::kFar>(reinterpret_cast<const char*>(w) + 64);
        acc.add(w, xq);
    };
    auto finish = [&](const Acc& acc, int r) {
        float sum = acc.total();
        if (4 * quads < blocks) {
            auto tail = legacy_tail_accumulator<Block>();
            for (int b = 4 * quads; b < blocks; ++b) tail.add(row(r)[b], x[b]);
            sum += tail.total();
        }
        return sum;
    };
    // Two streams as gemv_two_streams, sharing each step's activation registers.
    const int half = rows / 2;
    for (int r = 0; r < half; ++r) {
        Acc first, second;
        for (int q = 0; q < quads; ++q) {
            const LegacyQuadX xq(activation[q]);
            step(first, r, q, xq);
            step(second, r + half, q, xq);
        }
        y[r] = finish(first, r);
        y[r + half] = finish(second, r + half);
    }
    if (rows % 2 != 0) {
        Acc last;
        for (int q = 0; q < quads; ++q) step(last, rows - 1, q, LegacyQuadX(activation[q]));
        y[rows - 1] = finish(last, rows - 1);
    }
}

#if defined(__AVX512F__)
#pragma GCC pop_options
#endif

// ---- float rows (kFloatRows at a time: see dot_avx2.cpp)
//
// On the Zen 4 VM, one core, 256 MiB of rows on huge pages, share of the read loop's speed (three
// runs alternating): 2-byte rows eight at a time instead of four, F16 0.62-0.70 → 0.69-0.70, BF16
// 0.62-0.65 → 0.68-0.74 (F32 no better: 0.76-0.77 → 0.65-0.77, so it keeps four; two at a time
// was slower for all three). The 2-byte rows' lines are prefetched kFar ahead: on 4 KiB pages F16
// went 0.70-0.75 → 0.72-0.80 and BF16 0.74-0.76 → 0.77-0.87 (kNear lost: 0.61-0.68); on huge
// pages, which the engine asks for, it made no difference (F16 0.56-0.60 either way). F32 rows
// are not prefetched: on huge pages they ran 2-3% slower with it (benchmarks/kernels.py, one
// thread, 24.7 → 24.0 GB/s).
template <GgmlType kType> constexpr int kFloatRows = kType == GgmlType::F32 ? 4 : 8;

template <GgmlType kType>
__m512 load16(const void* row, int i) {
    if (kType == GgmlType::F32) return _mm512_loadu_ps(static_cast<const float*>(row) + i);
    const __m256i h = load256(static_cast<const uint16_t*>(row) + i);
    if (kType == GgmlType::F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// y[0..R) for R rows starting at `rows`, two accumulators per row.
template <GgmlType kType, int R>
void dot_float_rows(const uint8_t* rows, size_t row_stride, const float* x, int n, float* y) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const int main = n / 32 * 32;
    for (int i = 0; i < main; i += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
        for (int r = 0; r < R; ++r) {
            const uint8_t* row = rows + r * row_stride;
            if constexpr (kType != GgmlType::F32) prefetch_line<Reach::kFar>(row + 2 * i);   // one line: 32 weights
            acc[r][0] = _mm512_fmadd_ps(load16<kType>(row, i), x0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(load16<kType>(row, i + 16), x1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; ++r) {
        y[r] = hsum(_mm512_add_ps(acc[r][0], acc[r][1])) + float_row_tail_dot<kType>(rows + r * row_stride, x, main, n);
    }
}

template <GgmlType kType>
void gemv_float(const uint8_t* weights, size_t row_stride, int rows, const float* x, int n, float* y) {
    int r = 0;
    for (; r + kFloatRows<kType> <= rows; r += kFloatRows<kType>) {
        dot_float_rows<kType, kFloatRows<kType>>(weights + r * row_stride, row_stride, x, n, y + r);
    }
    for (; r < rows; ++r) dot_float_rows<kType, 1>(weights + r * row_stride, row_stride, x, n, y + r);
}

// ---- BF16 rows with vdpbf16ps

__m512bh as_bf16_pairs(__m512i v) {
    __m512bh pairs;
    std::memcpy(&pairs, &v, sizeof pairs);
    return pairs;
}

// As dot_float_rows, against x split into x_hi + x_lo (bf16 each); 32 weights per step.
template <int R>
void dot_bf16_rows(const uint8_t* rows, size_t row_stride, const uint16_t* x_hi, const uint16_t* x_lo,
                   const float* x, int main, int n, float* y) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int i = 0; i < main; i += 32) {
        const __m512bh hi = as_bf16_pairs(load512(x_hi + i)), lo = as_bf16_pairs(load512(x_lo + i));
        for (int r = 0; r < R; ++r) {
            prefetch_line<Reach::kFar>(rows + r * row_stride + 2 * i);
            const __m512bh w = as_bf16_pairs(load512(reinterpret_cast<const uint16_t*>(rows + r * row_stride) + i));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w, hi);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w, lo);
        }
    }
    for (int r = 0; r < R; ++r) {
        y[r] = hsum(_mm512_add_ps(acc[r][0], acc[r][1])) +
               float_row_tail_dot<GgmlType::BF16>(rows + r * row_stride, x, main, n);
    }
}

void gemv_bf16_dot(const uint8_t* weights, size_t row_stride, int rows, const float* x, int n, float* y) {
    const int main = n / 32 * 32;
    thread_local std::vector<uint16_t> split;   // x_hi[main] then x_lo[main]; grows once per thread
    split.resize(2 * static_cast<size_t>(main));
    uint16_t* x_hi = split.data();
    uint16_t* x_lo = x_hi + main;
    for (int i = 0; i < main; ++i) {
        x_hi[i] = f32_to_bf16(x[i]);
        x_lo[i] = f32_to_bf16(x[i] - bf16_to_f32(x_hi[i]));
    }
    int r = 0;
    for (; r + kFloatRows<GgmlType::BF16> <= rows; r += kFloatRows<GgmlType::BF16>) {
        dot_bf16_rows<kFloatRows<GgmlType::BF16>>(weights + r * row_stride, row_stride, x_hi, x_lo, x, main, n, y + r);
    }
    for (; r < rows; ++r) dot_bf16_rows<1>(weights + r * row_stride, row_stride, x_hi, x_lo, x, main, n, y + r);
}

// ---- entry points

// The legacy types four blocks per step where the CPU has AVX512-VBMI, else two.
template <class Block, bool kVbmi, class Activation>
void gemv_legacy(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
    if constexpr (kVbmi) gemv_legacy_quads<Block>(weights, row_stride, rows, x, blocks, y);
    else gemv_legacy_pairs<Block>(weights, row_stride, rows, x, blocks, y);
}

template <bool kBf16Dot, bool kVbmi>
void gemv(GgmlType type, const void* weights, size_t row_stride, int rows, const void* xq, int n, float* y) {
    const auto* base = static_cast<const uint8_t*>(weights);
    auto blocks_of = [&](auto accumulator, auto block, auto x, int blocks) {
        gemv_blocks<decltype(accumulator), std::remove_cv_t<std::remove_pointer_t<decltype(block)>>>(
            base, row_stride, rows, x, blocks, y);
    };
    if constexpr (kVbmi) {   // MXFP4 four blocks a step; without VBMI, dot_x86_iq.h's kernel below
        if (type == GgmlType::MXFP4) return gemv_legacy_quads<BlockMXFP4>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
    }
    if (run_iq_type(type, xq, n, blocks_of)) return;   // the types of dot_x86_iq.h
    switch (type) {
        case GgmlType::Q4_0: return gemv_legacy<BlockQ4_0, kVbmi>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::Q5_0: return gemv_legacy<BlockQ5_0, kVbmi>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::IQ4_NL: return gemv_legacy<BlockIQ4NL, kVbmi>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::Q4_1: return gemv_legacy<BlockQ4_1, kVbmi>(base, row_stride, rows, static_cast<const BlockQ8_1*>(xq), n / kQ8, y);
        case GgmlType::Q5_1: return gemv_legacy<BlockQ5_1, kVbmi>(base, row_stride, rows, static_cast<const BlockQ8_1*>(xq), n / kQ8, y);
        case GgmlType::Q4_K:
            return gemv_laid_out<Q4KLikeAccumulator<BlockQ4K>, BlockQ4K, Q4KActivation, lay_out_q4k_activation>(
                base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
        case GgmlType::Q5_K:
            return gemv_laid_out<Q4KLikeAccumulator<BlockQ5K>, BlockQ5K, Q4KActivation, lay_out_q4k_activation, Reach::kFar>(
                base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
        case GgmlType::IQ4_XS:
            return gemv_laid_out<IQ4XSAccumulator512, BlockIQ4XS, IQ4XSActivation, lay_out_iq4xs_activation>(
                base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
        case GgmlType::Q2_K:
            return gemv_laid_out<Q2KAccumulator512, BlockQ2K, Q2KActivation, lay_out_q2k_activation>(
                base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
        case GgmlType::Q3_K:
            return gemv_laid_out<Q3KAccumulator512, BlockQ3K, Q2KActivation, lay_out_q2k_activation>(
                base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
        case GgmlType::Q6_K:
            return gemv_blocks<Q6KAccumulator, BlockQ6K>(base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
        case GgmlType::Q8_0:
            return gemv_q8_0(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::BF16:
            if (kBf16Dot) return gemv_bf16_dot(base, row_stride, rows, static_cast<const float*>(xq), n, y);
            return gemv_float<GgmlType::BF16>(base, row_stride, rows, static_cast<const float*>(xq), n, y);
        case GgmlType::F32:
            return gemv_float<GgmlType::F32>(base, row_stride, rows, static_cast<const float*>(xq), n, y);
        case GgmlType::F16:
            return gemv_float<GgmlType::F16>(base, row_stride, rows, static_cast<const float*>(xq), n, y);
        default: run_shared_type(type, xq, n, blocks_of);   // the types of dot_x86_blocks.h
    }
}

template <bool kBf16Dot, bool kVbmi>
float vec_dot(GgmlType type, const void* row, const void* xq, int n) {
    float y = 0;
    gemv<kBf16Dot, kVbmi>(type, row, 0, 1, xq, n, &y);
    return y;
}

}  // namespace

const QuantKernels& avx512_quant_kernels(bool bf16_dot, bool vbmi) {
    static const QuantKernels plain{"avx512-vnni", Isa::avx512, quantize_activation, vec_dot<false, false>, gemv<false, false>};
    static const QuantKernels with_vbmi{"avx512-vnni-vbmi", Isa::avx512, quantize_activation, vec_dot<false, true>,
                                        gemv<false, true>};
    static const QuantKernels with_bf16{"avx512-vnni-bf16", Isa::avx512, quantize_activation, vec_dot<true, false>,
                                        gemv<true, false>};
    static const QuantKernels with_both{"avx512-vnni-bf16-vbmi", Isa::avx512, quantize_activation, vec_dot<true, true>,
                                        gemv<true, true>};
    if (bf16_dot) return vbmi ? with_both : with_bf16;
    return vbmi ? with_vbmi : plain;
}

}  // namespace numatune

#endif  // NUMATUNE_X86_VARIANTS
