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
//  * Q6_K joins a pair of 32-byte runs into one 512-bit vector that lines up with 64 contiguous
//    activation bytes.
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

// Prefetch distance as in dot_avx2.cpp. On the AVX-512 machine above, from memory (256 MiB of
// rows): 1.5-2 KiB ahead was best; 512 B, 4 KiB and more, prefetching into L2 only (T1/T2) at
// 4-16 KiB, or non-temporal (NTA) all measured slower.
constexpr size_t kPrefetchBytes = 2048;

template <class Block>
void prefetch_block(const Block* block) {
    const char* ahead = reinterpret_cast<const char*>(block) + kPrefetchBytes;
    for (size_t offset = 0; offset < sizeof(Block); offset += 64) _mm_prefetch(ahead + offset, _MM_HINT_T0);
}

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

// Q2_K, Q3_K, Q5_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS: the 256-bit kernels shared with
// dot_avx2.cpp, here
// with vpdpbusd/vpdpwssd (AVX512-VL VNNI) for the products.
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

struct Q4KAccumulator {
    __m512 scaled = _mm512_setzero_ps();   // d·Σ sc·(q·x)
    __m128 mins = _mm_setzero_ps();        // dmin·Σ m·(Σx)

    void add(const BlockQ4K& w, const Q4KActivation& x) {
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
            const __m512i lo = _mm512_and_si512(q, low_nibbles);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low_nibbles);
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

        const __m256i low_nibbles = _mm256_set1_epi8(0x0f), high_bits = _mm256_set1_epi8(0x30);
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = load256(w.ql + 64 * h);
            const __m256i l1 = load256(w.ql + 64 * h + 32);
            const __m256i hb = load256(w.qh + 32 * h);
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, low_nibbles), _mm256_and_si256(_mm256_slli_epi16(hb, 4), high_bits));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, low_nibbles), _mm256_and_si256(_mm256_slli_epi16(hb, 2), high_bits));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low_nibbles), _mm256_and_si256(hb, high_bits));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low_nibbles),
                                               _mm256_and_si256(_mm256_srli_epi16(hb, 2), high_bits));
            const __m512i first = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);   // weights 128h..+63
            const __m512i second = _mm512_inserti64x4(_mm512_castsi256_si512(q2), q3, 1);  // weights 128h+64..+127
            const __m512i dot_first = _mm512_dpbusd_epi32(_mm512_setzero_si512(), first, load512(x.qs + 128 * h));
            const __m512i dot_second = _mm512_dpbusd_epi32(_mm512_setzero_si512(), second, load512(x.qs + 128 * h + 64));
            sum = _mm512_dpwssd_epi32(sum, dot_first, _mm512_permutexvar_epi32(group_quad(2 * h), scales));
            sum = _mm512_dpwssd_epi32(sum, dot_second, _mm512_permutexvar_epi32(group_quad(2 * h + 1), scales));
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
            prefetch_block(w);
            prefetch_block(w + 1);
            acc.add_pair(w, pairs[p], x_scales + 2 * p);
        },
        [&](Q8_0Accumulator& acc, int r) {
            if (blocks % 2 != 0) {
                const BlockQ8_0* w = row(r) + (blocks - 1);
                prefetch_block(w);
                acc.add_last(*w, pairs[blocks / 2], x_scales[blocks - 1]);
            }
            return acc.total();
        },
        y);
}

// Q4_K and Q6_K rows, each block's bytes prefetched kPrefetchBytes ahead (running on into the
// next row, which is where that stream reads next).
template <class Acc, class Block, class Activation>
void gemv_blocks(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
    auto row = [&](int r) { return reinterpret_cast<const Block*>(weights + r * row_stride); };
    gemv_two_streams<Acc>(
        rows, blocks,
        [&](Acc& acc, int r, int b) {
            const Block* w = row(r) + b;
            prefetch_block(w);
            acc.add(*w, x[b]);
        },
        [](Acc& acc, int) { return acc.total(); }, y);
}

void gemv_q4_k(const uint8_t* weights, size_t row_stride, int rows, const BlockQ8K* x, int blocks, float* y) {
    thread_local LastActivation last;
    thread_local std::vector<Q4KActivation> laid_out;   // grows once per thread
    if (last.changed(x, sizeof(BlockQ8K) * blocks)) {
        laid_out.resize(static_cast<size_t>(blocks));
        lay_out_q4k_activation(x, blocks, laid_out.data());
    }
    gemv_blocks<Q4KAccumulator, BlockQ4K>(weights, row_stride, rows, laid_out.data(), blocks, y);
}

// ---- legacy blocks (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), two per step

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
    else if constexpr (std::is_same_v<Block, BlockIQ4NL>) return 128;
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
void gemv_legacy(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
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
            // One line ahead per pair: a pair (36-48 bytes) is shorter than a line, so every line is met.
            _mm_prefetch(reinterpret_cast<const char*>(w) + kPrefetchBytes, _MM_HINT_T0);
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

// ---- float rows (kFloatRows at a time: see dot_avx2.cpp)

constexpr int kFloatRows = 4;

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
    for (; r + kFloatRows <= rows; r += kFloatRows) {
        dot_float_rows<kType, kFloatRows>(weights + r * row_stride, row_stride, x, n, y + r);
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
    for (; r + kFloatRows <= rows; r += kFloatRows) {
        dot_bf16_rows<kFloatRows>(weights + r * row_stride, row_stride, x_hi, x_lo, x, main, n, y + r);
    }
    for (; r < rows; ++r) dot_bf16_rows<1>(weights + r * row_stride, row_stride, x_hi, x_lo, x, main, n, y + r);
}

// ---- entry points

template <bool kBf16Dot>
void gemv(GgmlType type, const void* weights, size_t row_stride, int rows, const void* xq, int n, float* y) {
    const auto* base = static_cast<const uint8_t*>(weights);
    auto blocks_of = [&](auto accumulator, auto block, auto x, int blocks) {
        gemv_blocks<decltype(accumulator), std::remove_cv_t<std::remove_pointer_t<decltype(block)>>>(
            base, row_stride, rows, x, blocks, y);
    };
    if (run_iq_type(type, xq, n, blocks_of)) return;   // the types of dot_x86_iq.h
    switch (type) {
        case GgmlType::Q4_0: return gemv_legacy<BlockQ4_0>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::Q5_0: return gemv_legacy<BlockQ5_0>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::IQ4_NL: return gemv_legacy<BlockIQ4NL>(base, row_stride, rows, static_cast<const BlockQ8_0*>(xq), n / kQ8, y);
        case GgmlType::Q4_1: return gemv_legacy<BlockQ4_1>(base, row_stride, rows, static_cast<const BlockQ8_1*>(xq), n / kQ8, y);
        case GgmlType::Q5_1: return gemv_legacy<BlockQ5_1>(base, row_stride, rows, static_cast<const BlockQ8_1*>(xq), n / kQ8, y);
        case GgmlType::Q4_K:
            return gemv_q4_k(base, row_stride, rows, static_cast<const BlockQ8K*>(xq), n / kQK, y);
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

template <bool kBf16Dot>
float vec_dot(GgmlType type, const void* row, const void* xq, int n) {
    float y = 0;
    gemv<kBf16Dot>(type, row, 0, 1, xq, n, &y);
    return y;
}

}  // namespace

const QuantKernels& avx512_quant_kernels() {
    static const QuantKernels kernels{"avx512-vnni", Isa::avx512, quantize_activation, vec_dot<false>, gemv<false>};
    return kernels;
}

const QuantKernels& avx512_bf16_quant_kernels() {
    static const QuantKernels kernels{"avx512-vnni-bf16", Isa::avx512, quantize_activation, vec_dot<true>, gemv<true>};
    return kernels;
}

}  // namespace numatune

#endif  // NUMATUNE_X86_VARIANTS
