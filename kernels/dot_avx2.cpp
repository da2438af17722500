// AVX2 + FMA variant of the row kernels (quant.h); compiled with -mavx2 -mfma -mf16c -mbmi2 and
// run only where CPUID allows. quant_ref.cpp is the truth it is tested against.
//
// Integer blocks: vpmaddubsw multiplies unsigned weight bytes by signed activation bytes and adds
// pairs into 16-bit lanes (no saturation for these ranges: at most 2·63·127), vpmaddwd then
// applies the sub-block scale while widening to 32 bits. A block's integer sum stays in a vector
// and is scaled into a float vector accumulator; the only horizontal sum is at the end of a row.
// The activation (a few KiB) stays in L1; the weights stream from memory, prefetched ahead.
#if NUMATUNE_X86_VARIANTS

#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "quant.h"
#include "quant_iq.h"

namespace numatune {
namespace {

// Adjacent quantized rows are not dotted together: on a Zen 3 core, 2 or 4 neighbouring rows
// against the same activation block measured slower (8-10 GB/s for Q4_K), unlike float rows (see
// kFloatRows). Two far-apart rows, one per stream, are (see gemv_blocks).
#include "dot_x86_prefetch.h"   // Reach, prefetch_line, prefetch_block

// Horizontal sums of a row's accumulator lanes, always in the tree ((0+1)+(2+3)) + ((4+5)+(6+7)),
// whether one row is summed alone (hsum) or eight together (hsum8): a row's result does not depend
// on how the rows were grouped, so splitting rows differently over workers gives the same output.
float hsum(__m256 v) {
    const __m256 pairs = _mm256_hadd_ps(v, v);
    const __m256 quads = _mm256_hadd_ps(pairs, pairs);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1)));
}

// The eight horizontal sums of v[0..8), as one vector (lane r = sum of v[r]).
__m256 hsum8(const __m256* v) {
    const __m256 low = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 high = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
}

float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

#include "dot_x86_blocks.h"   // Q2_K, Q3_K, Q5_K, Q4_1, Q5_1, IQ4_NL (shared with dot_avx512.cpp)
#include "dot_x86_iq.h"        // IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ3_XXS, IQ2_S, IQ3_S, MXFP4

// ---- activation (bit-identical to the reference: same scale, same products, ties to even)

float max_magnitude(const float* x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// 32 floats → 32 int8, in order. The values are within ±127, so the saturating packs are exact.
__m256i round_32(const float* x, __m256 inverse) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inverse));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), inverse));
    const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), inverse));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), inverse));
    // packs work within 128-bit lanes: the bytes come out as a0 b0 c0 d0 a1 b1 c1 d1 (4 each).
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    const __m256i clamped = _mm256_max_epi8(packed, _mm256_set1_epi8(-127));
    return _mm256_permutevar8x32_epi32(clamped, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void quantize_q8_k(const float* x, int n, BlockQ8K* y) {
    const __m256i ones = _mm256_set1_epi8(1);
    for (int b = 0; b < n / kQK; ++b, x += kQK) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQK));
        const __m256 inverse = _mm256_set1_ps(scale.inverse);
        y[b].d = scale.d;
        for (int i = 0; i < kQK; i += 32) {
            const __m256i q = round_32(x + i, inverse);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs + i), q);
            // bsums of the two 16-byte halves: pairs, then quads, then two horizontal adds per lane.
            const __m256i pairs = _mm256_maddubs_epi16(ones, q);
            const __m256i quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
            const __m256i octets = _mm256_hadd_epi32(quads, quads);
            const __m256i sums = _mm256_hadd_epi32(octets, octets);
            y[b].bsums[i / 16] = static_cast<int16_t>(_mm256_extract_epi32(sums, 0));
            y[b].bsums[i / 16 + 1] = static_cast<int16_t>(_mm256_extract_epi32(sums, 4));
        }
    }
}

void quantize_q8_0(const float* x, int n, BlockQ8_0* y) {
    for (int b = 0; b < n / kQ8; ++b, x += kQ8) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQ8));
        y[b].d = f32_to_f16(scale.d);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), round_32(x, _mm256_set1_ps(scale.inverse)));
    }
}

void quantize_q8_1(const float* x, int n, BlockQ8_1* y) {
    for (int b = 0; b < n / kQ8; ++b, x += kQ8) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQ8));
        y[b].d = f32_to_f16(scale.d);
        const __m256i q = round_32(x, _mm256_set1_ps(scale.inverse));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), q);
        const __m256i quads = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
        const __m128i half = _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256(quads, 1));
        const __m128i pairs = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
        y[b].sum = static_cast<int16_t>(_mm_cvtsi128_si32(_mm_add_epi32(pairs, _mm_shuffle_epi32(pairs, 1))));
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

// x.d·d and x.d·dmin of a Q4_K block, in lanes 0 and 1.
__m128 q4k_block_scales(const BlockQ4K& w, const BlockQ8K& x) {
    uint32_t both;
    std::memcpy(&both, &w.d, sizeof both);
    return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(both))), _mm_set1_ps(x.d));
}

struct Q4KAccumulator {
    __m256 scaled = _mm256_setzero_ps();   // d·Σ sc·(q·x)
    __m256 mins = _mm256_setzero_ps();     // dmin·Σ m·(Σx)

    void add(const BlockQ4K& w, const BlockQ8K& x) {
        const __m128i packed = q4k_scales_and_mins(w);
        const __m256i bytes = _mm256_broadcastsi128_si256(packed);
        const __m128 block_scales = q4k_block_scales(w, x);

        const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
        const __m256i min_terms = _mm256_madd_epi16(_mm256_shuffle_epi8(bytes, min_pairs_mask()), bsums);
        mins = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(block_scales)), _mm256_cvtepi32_ps(min_terms), mins);

        const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
        __m256i sum = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * j));
            const __m256i lo = _mm256_and_si256(q, low_nibbles);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low_nibbles);
            const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * j));
            const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * j + 32));
            const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x_lo),
                                                   _mm256_shuffle_epi8(bytes, scale_words_mask(2 * j)));
            const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x_hi),
                                                   _mm256_shuffle_epi8(bytes, scale_words_mask(2 * j + 1)));
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(p_lo, p_hi));
        }
        scaled = _mm256_fmadd_ps(_mm256_broadcastss_ps(block_scales), _mm256_cvtepi32_ps(sum), scaled);
    }

    // Lanes whose sum is the row's dot product.
    __m256 lanes() const { return _mm256_sub_ps(scaled, mins); }
};

// ---- Q6_K × Q8_K

struct Q6KAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockQ6K& w, const BlockQ8K& x) {
        const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)));
        // The weights are dotted as unsigned 0..63; Σ sc·(q−32)·x = Σ sc·q·x − 32·Σ sc·bsum.
        const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
        __m256i sum = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(scales16, bsums), 5));

        const __m256i low_nibbles = _mm256_set1_epi8(0x0f), high_bits = _mm256_set1_epi8(0x30);
        for (int h = 0; h < 2; ++h) {
            const __m256i half_scales = _mm256_permute4x64_epi64(scales16, h == 0 ? 0x44 : 0xee);
            const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qh + 32 * h));
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(l0, low_nibbles), _mm256_and_si256(_mm256_slli_epi16(hb, 4), high_bits)),
                _mm256_or_si256(_mm256_and_si256(l1, low_nibbles), _mm256_and_si256(_mm256_slli_epi16(hb, 2), high_bits)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low_nibbles), _mm256_and_si256(hb, high_bits)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low_nibbles),
                                _mm256_and_si256(_mm256_srli_epi16(hb, 2), high_bits)),
            };
            for (int k = 0; k < 4; ++k) {
                const __m256i xk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 128 * h + 32 * k));
                const __m256i products = _mm256_maddubs_epi16(q[k], xk);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(products, _mm256_shuffle_epi8(half_scales, pair_broadcast_mask(k))));
            }
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * f16_scalar(w.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
};

// ---- Q8_0 × Q8_0

struct Q8_0Accumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockQ8_0& w, const BlockQ8_0& x) {
        const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs));
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs));
        // |w| · (x with w's sign) = w·x, in the unsigned × signed form vpmaddubsw takes.
        const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(xq, wq));
        const __m256i sum = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(w.d) * f16_scalar(x.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
};

// Rows are read two at a time, row r with row r + rows/2, block by block: a core keeps more
// memory traffic in flight with two far-apart streams than with one (the hardware prefetcher
// follows each), as the AVX-512 kernels found (see gemv_two_streams in dot_avx512.cpp). On the
// Intel machine of docs/benchmarks.md, with these kernels forced (NUMATUNE_ISA=avx2), the
// engine's weight traffic over read bandwidth on one thread went from 0.79-0.83 to 0.95-0.97
// (Q4_K_M and Q8_0); not measured on an AMD CPU. Each block's bytes are prefetched
// kNear ahead (dot_x86_prefetch.h), running on into the stream's next row. The rows' sums are reduced eight
// at a time (four of each stream), which matters for narrow rows (a 768-wide Q6_K row is 3
// blocks); hsum and hsum8 add in the same order, so a row's result does not depend on how rows
// are split over workers.
template <class Acc, class Block, class Activation>
inline __attribute__((always_inline)) __m256 row_lanes(const Block* w, const Activation* x, int blocks) {
    Acc acc;
    for (int i = 0; i < blocks; ++i) {
        prefetch_block(w + i);
        acc.add(w[i], x[i]);
    }
    return acc.lanes();
}

template <class Acc, class Block, class Activation>
inline __attribute__((always_inline)) void row_pair_lanes(const Block* a, const Block* b, const Activation* x,
                                                          int blocks, __m256& lanes_a, __m256& lanes_b) {
    Acc first, second;
    for (int i = 0; i < blocks; ++i) {
        prefetch_block(a + i);
        first.add(a[i], x[i]);
        prefetch_block(b + i);
        second.add(b[i], x[i]);
    }
    lanes_a = first.lanes();
    lanes_b = second.lanes();
}

template <class Acc, class Block, class Activation>
void gemv_blocks(const uint8_t* weights, size_t row_stride, int rows, const Activation* x, int blocks, float* y) {
    auto row = [&](int r) { return reinterpret_cast<const Block*>(weights + r * row_stride); };
    const int half = rows / 2;
    int r = 0;
    for (; r + 4 <= half; r += 4) {
        __m256 lanes[8];
        for (int i = 0; i < 4; ++i) row_pair_lanes<Acc, Block>(row(r + i), row(r + half + i), x, blocks, lanes[i], lanes[4 + i]);
        const __m256 sums = hsum8(lanes);
        _mm_storeu_ps(y + r, _mm256_castps256_ps128(sums));
        _mm_storeu_ps(y + r + half, _mm256_extractf128_ps(sums, 1));
    }
    for (; r < half; ++r) {
        __m256 a, b;
        row_pair_lanes<Acc, Block>(row(r), row(r + half), x, blocks, a, b);
        y[r] = hsum(a);
        y[r + half] = hsum(b);
    }
    if (rows % 2 != 0) y[rows - 1] = hsum(row_lanes<Acc, Block>(row(rows - 1), x, blocks));
}

// ---- float rows

// Each row's lines are prefetched kFar ahead (4 KiB into L2, dot_x86_prefetch.h). On the Zen 4 VM,
// with this variant, one core, 256 MiB of rows, share of the read loop's speed (three runs
// alternating), without → with: on 4 KiB pages F16 0.66-0.68 → 0.70-0.76, BF16 0.63-0.64 →
// 0.72-0.81, F32 0.94-0.97 → 0.88-0.99; on huge pages F16 0.60-0.69 → 0.62-0.63, BF16
// 0.59-0.60 → 0.65-0.69, F32 0.82-0.85 → 0.79-0.83, so F32 rows are not prefetched. The
// quantized rows above keep kNear.
//
// Float rows go kFloatRows at a time so that each load of x serves several rows: x stays f32
// (4 bytes per weight, twice the bytes of an F16 row), and a 7168-wide x fills L1, so one row at
// a time re-reads it from L2 for every row. Measured on a Zen 3 core, 4 rows at a time took F16
// and BF16 rows from 14 to 19 GB/s and F32 from 17 to 23 GB/s. (For the quantized rows, whose
// activation is a quarter of the size, several rows at a time measured slower.)
constexpr int kFloatRows = 4;

template <GgmlType kType>
__m256 load8(const void* row, int i) {
    if (kType == GgmlType::F32) return _mm256_loadu_ps(static_cast<const float*>(row) + i);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
    if (kType == GgmlType::F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// y[0..R) for R rows starting at `rows`, two accumulators per row.
template <GgmlType kType, int R>
void dot_float_rows(const uint8_t* rows, size_t row_stride, const float* x, int n, float* y) {
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const int main = n / 16 * 16;
    for (int i = 0; i < main; i += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        for (int r = 0; r < R; ++r) {
            const uint8_t* row = rows + r * row_stride;
            if (kType != GgmlType::F32 && i % 32 == 0) prefetch_line<Reach::kFar>(row + 2 * i);
            acc[r][0] = _mm256_fmadd_ps(load8<kType>(row, i), x0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(load8<kType>(row, i + 8), x1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; ++r) {
        y[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + float_row_tail_dot<kType>(rows + r * row_stride, x, main, n);
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

// ---- entry points

// ---- Q4_0 and Q5_0 as unsigned values
//
// dot_x86_blocks.h's kernel (now only the AVX-512 variant's tails) dots q − 8 (q − 16) by the
// sign trick: a subtraction, vpabsb and vpsignb a block. Here the stored value u = q + 8 (q + 16)
// is dotted as it is, unsigned (vpmaddubsw: pairs of at most 31·127, no saturation), and the
// offset −8·Σx (−16·Σx) is added to the block's eight lanes from a copy of the activation made
// once per gemv (a few KiB) that also holds dx as a float. MXFP4 the same way, its values (±12)
// shifted by 16. IQ4_NL keeps the sign trick: its grid values shifted to unsigned reach 255, and
// 255·127 pairs would saturate vpmaddubsw.
struct alignas(32) UnsignedLegacyX {
    int8_t qs[kQ8];
    int32_t offset;   // −bias/8 · Σx, per lane
    float dx;
};

template <class Block>
struct UnsignedLegacyAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const Block& w, const UnsignedLegacyX& x) {
        __m256i values;
        float factor;
        if constexpr (std::is_same_v<Block, BlockMXFP4>) {   // E2M1 values (doubled) + 16, in 4..28
            const __m256i table = _mm256_add_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kMxfp4Values))),
                                                  _mm256_set1_epi8(16));
            values = _mm256_shuffle_epi8(table, legacy_nibbles(w.qs));
            factor = e8m0_half(w.e) * x.dx;
        } else {
            values = legacy_values(w);
            factor = f16_scalar(w.d) * x.dx;
        }
        const __m256i pairs = _mm256_maddubs_epi16(values, load_bytes(x.qs));
        const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), _mm256_set1_epi32(x.offset));
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(factor), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

template <class Block, int kBias>
void gemv_unsigned_legacy(const uint8_t* weights, size_t row_stride, int rows, const BlockQ8_0* x, int blocks, float* y) {
    static_assert(kBias % 8 == 0, "the offset is spread evenly over eight lanes");
    thread_local std::vector<UnsignedLegacyX> copy;   // grows once per thread
    copy.resize(static_cast<size_t>(blocks));
    for (int b = 0; b < blocks; ++b) {
        std::memcpy(copy[b].qs, x[b].qs, kQ8);
        int sum = 0;
        for (int i = 0; i < kQ8; ++i) sum += x[b].qs[i];
        copy[b].offset = -kBias / 8 * sum;
        copy[b].dx = f16_scalar(x[b].d);
    }
    gemv_blocks<UnsignedLegacyAccumulator<Block>, Block>(weights, row_stride, rows, copy.data(), blocks, y);
}

// ---- IQ4_XS, two sub-blocks per 256-bit step
//
// The kernel this replaced read 16 bytes of nibbles per sub-block and took each sub-block's scale
// out in general registers. Here one 32-byte load
// holds sub-blocks 2k and 2k + 1; its low nibbles are weights 64k..+15 and 64k+32..+47, its high
// ones 64k+16..+31 and 64k+48..+63, so the activation is copied once per gemv in that order (a
// few KiB). The eight scales are unpacked once per block into words (iq4xs_scale_bytes), and one
// vpshufb puts sub-block 2k's under the low 128-bit lane and 2k + 1's under the high one.
struct alignas(32) IQ4XSPairX {
    int8_t low[4][32];    // step k: x[64k..+15], x[64k+32..+47]
    int8_t high[4][32];   // step k: x[64k+16..+31], x[64k+48..+63]
    float d;
};

void lay_out_iq4xs_pairs(const BlockQ8K* x, int blocks, IQ4XSPairX* out) {
    for (int b = 0; b < blocks; ++b) {
        for (int k = 0; k < 4; ++k) {
            std::memcpy(out[b].low[k], x[b].qs + 64 * k, 16);
            std::memcpy(out[b].low[k] + 16, x[b].qs + 64 * k + 32, 16);
            std::memcpy(out[b].high[k], x[b].qs + 64 * k + 16, 16);
            std::memcpy(out[b].high[k] + 16, x[b].qs + 64 * k + 48, 16);
        }
        out[b].d = x[b].d;
    }
}

struct IQ4XSPairAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockIQ4XS& w, const IQ4XSPairX& x) {
        const __m256i words = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(iq4xs_scales8(w)));   // s[0..7] − 32, both lanes
        const __m256i grid = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
        const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
        __m256i sum = _mm256_setzero_si256();
        for (int k = 0; k < 4; ++k) {
            const __m256i q = load_bytes(w.qs + 32 * k);
            const __m256i scale = _mm256_shuffle_epi8(words, pair_broadcast_mask(k));
            const __m256i low = _mm256_shuffle_epi8(grid, _mm256_and_si256(q, low_nibbles));
            const __m256i high = _mm256_shuffle_epi8(grid, _mm256_and_si256(_mm256_srli_epi16(q, 4), low_nibbles));
            sum = dot_signed_scaled(sum, low, load_bytes(x.low[k]), scale);
            sum = dot_signed_scaled(sum, high, load_bytes(x.high[k]), scale);
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * f16_scalar(w.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

void gemv_iq4xs_pairs(const uint8_t* weights, size_t row_stride, int rows, const BlockQ8K* x, int blocks, float* y) {
    thread_local std::vector<IQ4XSPairX> copy;   // grows once per thread
    copy.resize(static_cast<size_t>(blocks));
    lay_out_iq4xs_pairs(x, blocks, copy.data());
    gemv_blocks<IQ4XSPairAccumulator, BlockIQ4XS>(weights, row_stride, rows, copy.data(), blocks, y);
}

void gemv(GgmlType type, const void* weights, size_t row_stride, int rows, const void* xq, int n, float* y) {
    const auto* base = static_cast<const uint8_t*>(weights);
    const auto* q8_0 = static_cast<const BlockQ8_0*>(xq);
    const auto* q8_k = static_cast<const BlockQ8K*>(xq);
    auto blocks_of = [&](auto accumulator, auto block, auto x, int blocks) {
        gemv_blocks<decltype(accumulator), std::remove_cv_t<std::remove_pointer_t<decltype(block)>>>(
            base, row_stride, rows, x, blocks, y);
    };
    switch (type) {
        case GgmlType::Q4_0: return gemv_unsigned_legacy<BlockQ4_0, 8>(base, row_stride, rows, q8_0, n / kQ8, y);
        case GgmlType::Q5_0: return gemv_unsigned_legacy<BlockQ5_0, 16>(base, row_stride, rows, q8_0, n / kQ8, y);
        case GgmlType::MXFP4: return gemv_unsigned_legacy<BlockMXFP4, 16>(base, row_stride, rows, q8_0, n / kQ8, y);
        case GgmlType::IQ4_XS: return gemv_iq4xs_pairs(base, row_stride, rows, q8_k, n / kQK, y);
        case GgmlType::Q4_K: return gemv_blocks<Q4KAccumulator, BlockQ4K>(base, row_stride, rows, q8_k, n / kQK, y);
        case GgmlType::Q6_K: return gemv_blocks<Q6KAccumulator, BlockQ6K>(base, row_stride, rows, q8_k, n / kQK, y);
        case GgmlType::Q8_0: return gemv_blocks<Q8_0Accumulator, BlockQ8_0>(base, row_stride, rows, q8_0, n / kQ8, y);
        case GgmlType::F32:
            return gemv_float<GgmlType::F32>(base, row_stride, rows, static_cast<const float*>(xq), n, y);
        case GgmlType::F16:
            return gemv_float<GgmlType::F16>(base, row_stride, rows, static_cast<const float*>(xq), n, y);
        case GgmlType::BF16:
            return gemv_float<GgmlType::BF16>(base, row_stride, rows, static_cast<const float*>(xq), n, y);
        default:   // the types of dot_x86_blocks.h and dot_x86_iq.h
            if (!run_shared_type(type, xq, n, blocks_of)) run_iq_type(type, xq, n, blocks_of);
    }
}

float vec_dot(GgmlType type, const void* row, const void* xq, int n) {
    float y = 0;
    gemv(type, row, 0, 1, xq, n, &y);
    return y;
}

}  // namespace

const QuantKernels& avx2_quant_kernels() {
    static const QuantKernels kernels{"avx2", Isa::avx2, quantize_activation, vec_dot, gemv};
    return kernels;
}

}  // namespace numatune

#endif  // NUMATUNE_X86_VARIANTS
