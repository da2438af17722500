// Row kernels of the codebook types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ3_XXS, IQ2_S, IQ3_S (× Q8_K)
// and MXFP4 (× Q8_0) (quant_iq.h) on 256-bit vectors: included by dot_avx2.cpp and dot_avx512.cpp
// after dot_x86_blocks.h, whose dot_scaled primitive they use (vpmaddubsw + vpmaddwd, or
// vpdpbusd + vpdpwssd with VNNI), inside namespace numatune { namespace { ... } }; the including
// file includes quant_iq.h at file scope.
//
// Per 32 weights, the codebook entries of its groups of 4 or 8 are 32- or 64-bit loads from the
// table (iq_grids.h), put side by side in one vector, so that its bytes line up with 32 activation
// bytes. (vpgatherdq from indices built in a vector measured slower on the Zen 4 of
// docs/benchmarks.md: IQ2_XXS rows in cache 3.2 → 1.8 GB/s, IQ1_S 2.3 → 1.8.) Then:
//  * IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: the grid values are positive, so they are the
//    unsigned side of the product as they are; the signs go to the activation (vpsignb by ±1
//    bytes). Four products of magnitudes ≤ 62 with |x| ≤ 127 stay within the 16 bits that
//    vpdpwssd's scaling reads.
//  * IQ1_S, IQ1_M: grid values −1, 0, 1 become 8·grid (vpsignb of 8 by the grid) plus the group's
//    ±1 shift, and are dotted as |v| against x with v's sign (v is never 0); at most 4·9·127.
//  * MXFP4 looks its 16 values up with vpshufb, as IQ4_NL does.
// A group's scale 2s + 1 multiplies its products in the 16-bit words; a block's integer sum is
// scaled once by its factor times the activation's d. The scales of a block's eight sub-blocks
// are unpacked in one vector before its steps (one vpshufb per step puts them in place), and
// each block's add is forced inline with its eight steps unrolled: as an out-of-line call per
// block with a rolled loop (GCC's choice), the AVX2 variant's rows in L2 ran at IQ1_M 1.5,
// IQ2_XS 2.7, IQ2_S 3.1 GB/s on the Zen 4 of docs/benchmarks.md; inlined and unrolled at 3.2,
// 4.5 and 4.8 (2026-12-07).
#pragma once

// Per 7-bit sign index, 8 bytes of +1 or −1 (−1 where the sign bit is set): vpsignb's operand.
// The 8 sign bits of index i are iq_ksigns[i] (iq_grids.h): i itself, with bit 7 making the count
// of set bits even. Built at compile time: this header is compiled with AVX2/AVX-512 flags, and a
// table filled when the library loads would run those instructions on any CPU (SIGILL without
// them); tests/test_iq_grids.py checks that no ISA-specific file has a load-time initializer.
struct IqSignMasks {
    uint64_t masks[128];
};
constexpr IqSignMasks make_iq_sign_masks() {
    IqSignMasks table{};
    for (int i = 0; i < 128; ++i) {
        int set = 0;
        for (int k = 0; k < 7; ++k) set += (i >> k) & 1;
        const int bits = i | ((set & 1) << 7);
        for (int k = 0; k < 8; ++k) table.masks[i] |= static_cast<uint64_t>((bits >> k) & 1 ? 0xff : 0x01) << (8 * k);
    }
    return table;
}
constexpr IqSignMasks iq_sign_masks = make_iq_sign_masks();

// Four 64-bit table entries, the first in the lowest lane.
inline __m256i four_entries(const uint64_t* table, unsigned a, unsigned b, unsigned c, unsigned d) {
    return _mm256_set_epi64x(static_cast<long long>(table[d]), static_cast<long long>(table[c]),
                             static_cast<long long>(table[b]), static_cast<long long>(table[a]));
}

// Eight 32-bit table entries at indices index(0..7), the first in the lowest lane.
template <class Index>
inline __m256i eight_entries(const uint32_t* table, Index index) {
    return _mm256_setr_epi32(static_cast<int>(table[index(0)]), static_cast<int>(table[index(1)]),
                             static_cast<int>(table[index(2)]), static_cast<int>(table[index(3)]),
                             static_cast<int>(table[index(4)]), static_cast<int>(table[index(5)]),
                             static_cast<int>(table[index(6)]), static_cast<int>(table[index(7)]));
}

// Per-super-block scales: 2s + 1 of each 32 weights' s, taken out of the block once as eight
// words (low lane: the first 16 weights' s, high lane: the last 16's; the same s in both lanes when
// the 32 share it), then put under each step by one vpshufb, rather than extracted, moved to a
// vector register and broadcast per step.
inline __m256i odd_scales(__m128i low, __m128i high) {
    return _mm256_or_si256(_mm256_slli_epi16(_mm256_set_m128i(high, low), 1), _mm256_set1_epi16(1));
}
inline __m256i odd_scales(__m128i both) { return odd_scales(both, both); }
// Word b of each lane of `scales` in every word of its lane.
inline __m256i step_scales(__m256i scales, int b) {
    return scale_lanes(_mm256_shuffle_epi8(scales, _mm256_set1_epi16(static_cast<short>((2 * b) | ((2 * b + 1) << 8)))));
}

// ±1 bytes from 32 sign bits (in every 32-bit lane of `bits`): byte i is −1 where bit i is set,
// else +1.
inline __m256i sign_bytes(__m256i bits) {
    const __m256i spread = _mm256_shuffle_epi8(bits,
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(1));
}
inline __m256i sign_bytes(uint32_t bits) { return sign_bytes(_mm256_set1_epi32(static_cast<int>(bits))); }
// The signs of sub-block b, from the eight sub-blocks' 32 sign bits in the lanes of `all`.
inline __m256i step_signs(__m256i all, int b) { return sign_bytes(_mm256_permutevar8x32_epi32(all, _mm256_set1_epi32(b))); }

// The 32 sign bits of each of eight IQ3_XXS sign words (four 7-bit iq_ksigns indices in
// bits 0-27), computed in one vector per block rather than looked up per index: index k goes to
// byte k, and bit 7 of each byte makes its count of set bits even (the parity of bits 0-6, by
// three shift-and-xor folds that only mix bits within a byte where bit 0 is read).
inline __m256i ksign_words(__m256i words) {
    const auto field = [words](int k) {
        return _mm256_slli_epi32(_mm256_and_si256(words, _mm256_set1_epi32(0x7f << (7 * k))), k);
    };
    const __m256i bytes = _mm256_or_si256(_mm256_or_si256(field(0), field(1)), _mm256_or_si256(field(2), field(3)));
    __m256i parity = _mm256_xor_si256(bytes, _mm256_srli_epi16(bytes, 4));
    parity = _mm256_xor_si256(parity, _mm256_srli_epi16(parity, 2));
    parity = _mm256_xor_si256(parity, _mm256_srli_epi16(parity, 1));
    return _mm256_or_si256(bytes, _mm256_slli_epi16(_mm256_and_si256(parity, _mm256_set1_epi8(1)), 7));
}

// 2s + 1 of the s in the top nibble of each of eight 32-bit words, as step_scales reads them.
inline __m256i top_nibble_scales(__m256i words) {
    const __m256i s = _mm256_srli_epi32(words, 28);
    return odd_scales(_mm_packus_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1)));
}

// 32 weights of a signed-grid type: magnitudes g against x with the weights' signs (±1 bytes).
inline __m256i signed_step(__m256i sum, __m256i g, __m256i signs, const int8_t* x, __m256i scale) {
    return dot_scaled(sum, g, _mm256_sign_epi8(load_bytes(x), signs), scale);
}

// 32 weights of an IQ1 type: values 8·grid + shift (shift bytes ±1) against x.
inline __m256i iq1_step(__m256i sum, __m256i grid, __m256i shifts, const int8_t* x, __m256i scale) {
    const __m256i v = _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), grid), shifts);
    return dot_scaled(sum, _mm256_abs_epi8(v), _mm256_sign_epi8(load_bytes(x), v), scale);
}

// The row's float sum: a block's integer sum times its factor and the activation's d.
struct IqAccumulatorBase {
    __m256 scaled = _mm256_setzero_ps();

    void finish_block(__m256i sum, float factor, float dx) {
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(dx * factor), _mm256_cvtepi32_ps(sum), scaled);
    }
    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

struct IQ2XXSAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ2XXS& w, const BlockQ8K& x) {
        // s: the top nibble of each 64-bit group word. The signs stay table loads here: computing
        // them in vectors, as for IQ3_XXS, measured slower (4.2 -> 3.9 GB/s in L2, Zen 4).
        const __m256i top = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        const __m256i s0 = _mm256_permutevar8x32_epi32(_mm256_srli_epi64(load_bytes(w.qs), 60), top);
        const __m256i s1 = _mm256_permutevar8x32_epi32(_mm256_srli_epi64(load_bytes(w.qs + 16), 60), top);
        const __m256i scales = odd_scales(_mm_packus_epi32(_mm256_castsi256_si128(s0), _mm256_castsi256_si128(s1)));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const uint32_t grid = load_le32(w.qs + 4 * b), signs = load_le32(w.qs + 4 * b + 2);
            const __m256i values = four_entries(iq2xxs_grid, grid & 0xff, (grid >> 8) & 0xff, (grid >> 16) & 0xff, grid >> 24);
            const __m256i masks = four_entries(iq_sign_masks.masks, signs & 0x7f, (signs >> 7) & 0x7f,
                                               (signs >> 14) & 0x7f, (signs >> 21) & 0x7f);
            sum = signed_step(sum, values, masks, x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ2XSAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ2XS& w, const BlockQ8K& x) {
        const __m128i nibbles = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.scales)));
        const __m256i scales = odd_scales(_mm_and_si128(nibbles, _mm_set1_epi16(0x0f)), _mm_srli_epi16(nibbles, 4));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const uint16_t* q = w.qs + 4 * b;
            const __m256i values = four_entries(iq2xs_grid, q[0] & 0x1ff, q[1] & 0x1ff, q[2] & 0x1ff, q[3] & 0x1ff);
            const __m256i masks = four_entries(iq_sign_masks.masks, q[0] >> 9, q[1] >> 9, q[2] >> 9, q[3] >> 9);
            sum = signed_step(sum, values, masks, x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ1SAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ1S& w, const BlockQ8K& x) {
        const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qh));
        const __m256i scales = odd_scales(_mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7)));
        // the sign of each sub-block's δ as ±1 in the low byte of its word, in both lanes
        const __m256i deltas = _mm256_broadcastsi128_si256(_mm_or_si128(_mm_srai_epi16(qh, 15), _mm_set1_epi16(1)));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const unsigned qh = w.qh[b];
            const uint8_t* qs = w.qs + 4 * b;
            const __m256i grid = four_entries(iq1s_grid, qs[0] | ((qh << 8) & 0x700), qs[1] | ((qh << 5) & 0x700),
                                              qs[2] | ((qh << 2) & 0x700), qs[3] | ((qh >> 1) & 0x700));
            const __m256i shifts = _mm256_shuffle_epi8(deltas, _mm256_set1_epi8(static_cast<char>(2 * b)));
            sum = iq1_step(sum, grid, shifts, x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ1MAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ1M& w, const BlockQ8K& x) {
        // Word b of the low lane: s of weights 32b..+15, bits 6(b % 2).. of scales[b / 2]; of the
        // high lane: weights 32b+16..+31, bits 6(b % 2) + 3... Each word is shifted left by a
        // multiply so that its 3 bits end at the top, then right by 13.
        const __m128i packed = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.scales)),
                                                _mm_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7));
        const __m256i to_top = _mm256_setr_epi16(1 << 13, 1 << 7, 1 << 13, 1 << 7, 1 << 13, 1 << 7, 1 << 13, 1 << 7,
                                                 1 << 10, 1 << 4, 1 << 10, 1 << 4, 1 << 10, 1 << 4, 1 << 10, 1 << 4);
        const __m256i s3 = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_broadcastsi128_si256(packed), to_top), 13);
        const __m256i scales = _mm256_or_si256(_mm256_slli_epi16(s3, 1), _mm256_set1_epi16(1));
        // Group k of sub-block b: its δ's sign is bit 3 (k even) or 7 (k odd) of qh[2b + k / 2].
        const __m256i qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qh)));
        const __m256i delta_bits = _mm256_setr_epi8(8, 8, 8, 8, 8, 8, 8, 8, -128, -128, -128, -128, -128, -128, -128, -128,
                                                    8, 8, 8, 8, 8, 8, 8, 8, -128, -128, -128, -128, -128, -128, -128, -128);
        __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const unsigned h0 = w.qh[2 * b], h1 = w.qh[2 * b + 1];
            const uint8_t* qs = w.qs + 4 * b;
            const __m256i grid = four_entries(iq1s_grid, qs[0] | ((h0 & 7) << 8), qs[1] | ((h0 & 0x70) << 4),
                                              qs[2] | ((h1 & 7) << 8), qs[3] | ((h1 & 0x70) << 4));
            const __m256i bits = _mm256_and_si256(_mm256_shuffle_epi8(qh, pick), delta_bits);
            const __m256i shifts = _mm256_or_si256(_mm256_cmpeq_epi8(bits, delta_bits), _mm256_set1_epi8(1));
            pick = _mm256_add_epi8(pick, _mm256_set1_epi8(2));
            sum = iq1_step(sum, grid, shifts, x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(iq1m_d(w)) * 0.125f, x.d);
    }
};

struct IQ3XXSAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ3XXS& w, const BlockQ8K& x) {
        const __m256i words = load_bytes(w.scales_signs);
        const __m256i scales = top_nibble_scales(words), signs = ksign_words(words);
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const uint8_t* q = w.qs + 8 * b;
            const __m256i g = eight_entries(iq3xxs_grid, [q](int k) { return q[k]; });
            sum = signed_step(sum, g, step_signs(signs, b), x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(w.d) * 0.25f, x.d);
    }
};

struct IQ2SAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ2S& w, const BlockQ8K& x) {
        const __m128i nibbles = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.scales)));
        const __m256i scales = odd_scales(_mm_and_si128(nibbles, _mm_set1_epi16(0x0f)), _mm_srli_epi16(nibbles, 4));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const __m256i g = four_entries(iq2s_grid, iq2s_index(w, b, 0), iq2s_index(w, b, 1), iq2s_index(w, b, 2),
                                           iq2s_index(w, b, 3));
            sum = signed_step(sum, g, sign_bytes(load_le32(w.signs + 4 * b)), x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ3SAccumulator : IqAccumulatorBase {
    __attribute__((always_inline)) void add(const BlockIQ3S& w, const BlockQ8K& x) {
        const __m128i bytes = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(static_cast<int>(load_le32(w.scales))));
        const __m256i scales = odd_scales(_mm_unpacklo_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x0f)), _mm_srli_epi16(bytes, 4)));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int b = 0; b < 8; ++b) {
            const __m256i g = eight_entries(iq3s_grid, [&w, b](int k) { return iq3s_index(w, b, k); });
            sum = signed_step(sum, g, sign_bytes(load_le32(w.signs + 4 * b)), x.qs + 32 * b, step_scales(scales, b));
        }
        finish_block(sum, f16_scalar(w.d), x.d);
    }
};

struct MXFP4Accumulator : IqAccumulatorBase {
    void add(const BlockMXFP4& w, const BlockQ8_0& x) {
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kMxfp4Values)));
        const __m256i values = _mm256_shuffle_epi8(table, legacy_nibbles(w.qs));
        finish_block(dot_signed(_mm256_setzero_si256(), values, load_bytes(x.qs)), e8m0_half(w.e), f16_scalar(x.d));
    }
};

#if defined(NUMATUNE_DOT_VNNI)
// ---- 512-bit kernels (AVX-512 BW + VNNI): 64 weights a step, codebooks and signs as bit masks
//
// IQ2_XXS, IQ2_XS, IQ2_S. Their codebook values are 8, 25 and 43: an entry is eight 2-bit codes,
// kept as two 8-bit planes in one 16-bit word (low byte: bit 0 of each value's code, high byte:
// bit 1), so that a codebook of 256, 512 or 1024 entries is 8, 16 or 32 zmm loads. A block's 32
// grid indices are looked up in one vector (a vpermi2w per 64 words, then a tree of blends by
// the higher index bits), and one vpshufb lines the planes up as two
// 64-bit masks per 64 weights: the weight bytes are then two masked moves of constants (8, 25,
// 43), with no per-byte decoding. The signs (7-bit iq_ksigns indices: four per 32-bit word in
// IQ2_XXS, one per 16-bit word in IQ2_XS; IQ2_S stores the bits) become the block's 32 sign bytes
// in a few vector steps; 8 of them are the 64-bit mask that negates 64
// activation bytes (vpsubb under the mask: AVX-512 has no vpsignb). What crosses from vectors to
// masks goes through the stack (a store, then 64-bit mask loads; taking them out of the vectors
// with vpextrq measured the same). No scalar codebook load is left; on the Zen 4 of
// docs/benchmarks.md this took rows in L2 from 3.1 to 3.7 GB/s (IQ2_XXS; IQ2_XS 2.9 → 3.7, IQ2_S
// 2.9 → 3.5; a first IQ2_XXS version that decoded codes and signs to bytes per step with vpermw,
// vpsrlvw and vpshufb: 3.3), and the ~13 shuffles and ~60 other 512-bit operations of a block
// still bound it.

// A codebook of 8-value entries as code planes, by the index of each value in `values` (built at
// compile time, see IqSignMasks for why; a value not in `values` fails to compile).
template <int N>
struct IqCodes {
    alignas(64) uint16_t words[N];
};
template <int N>
constexpr IqCodes<N> make_iq_codes(const uint64_t* grid, const uint8_t (&values)[3]) {
    IqCodes<N> table{};
    for (int e = 0; e < N; ++e) {
        unsigned planes = 0;
        for (int k = 0; k < 8; ++k) {
            const unsigned v = (grid[e] >> (8 * k)) & 0xff;
            unsigned c = 0;
            while (values[c] != v) ++c;
            planes |= (c & 1) << k | (c >> 1) << (8 + k);
        }
        table.words[e] = static_cast<uint16_t>(planes);
    }
    return table;
}
constexpr uint8_t kIq2Values[3] = {8, 25, 43};
constexpr IqCodes<256> iq2xxs_codes = make_iq_codes<256>(iq2xxs_grid, kIq2Values);
constexpr IqCodes<512> iq2xs_codes = make_iq_codes<512>(iq2xs_grid, kIq2Values);
constexpr IqCodes<1024> iq2s_codes = make_iq_codes<1024>(iq2s_grid, kIq2Values);

// The words of an N-word table at the 32 word indices idx (0..N−1): one vpermi2w per 64 words,
// then a tree of blends by index bits 6, 7, ...
template <int N>
inline __m512i lookup_codes(const IqCodes<N>& table, __m512i idx) {
    const __m512i* t = reinterpret_cast<const __m512i*>(table.words);
    __m512i level[N / 64];
    for (int i = 0; i < N / 64; ++i) level[i] = _mm512_permutex2var_epi16(_mm512_load_si512(t + 2 * i), idx, _mm512_load_si512(t + 2 * i + 1));
    for (int bit = 6, count = N / 64; count > 1; ++bit, count /= 2) {
        const __mmask32 set = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(static_cast<short>(1 << bit)));
        for (int i = 0; i < count / 2; ++i) level[i] = _mm512_mask_blend_epi16(set, level[2 * i], level[2 * i + 1]);
    }
    return level[0];
}


// Bytes holding 7-bit iq_ksigns indices, made their sign bytes: bit 7 set where the index has an
// odd count of set bits (a vpshufb table of the parity of 4 bits, for each half).
inline __m512i with_parity(__m512i t) {
    const __m512i odd = _mm512_broadcast_i32x4(_mm_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0));
    const __m512i nibbles = _mm512_set1_epi8(0x0f);
    const __m512i low = _mm512_shuffle_epi8(odd, _mm512_and_si512(t, nibbles));
    const __m512i high = _mm512_shuffle_epi8(odd, _mm512_and_si512(_mm512_srli_epi16(t, 4), nibbles));
    return _mm512_ternarylogic_epi32(t, low, high, 0x96);   // t ^ low ^ high
}

// The sign bytes of the eight 32-bit words (four 7-bit iq_ksigns indices each) of `words`: byte g
// of a word's lane is the sign byte of its index g (the index, bit 7 making the parity even).
inline __m256i ksign_bytes(__m256i words) {
    const __m256i t = _mm256_or_si256(
        _mm256_or_si256(_mm256_and_si256(words, _mm256_set1_epi32(0x7f)),
                        _mm256_and_si256(_mm256_slli_epi32(words, 1), _mm256_set1_epi32(0x7f00))),
        _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi32(words, 2), _mm256_set1_epi32(0x7f0000)),
                        _mm256_and_si256(_mm256_slli_epi32(words, 3), _mm256_set1_epi32(0x7f000000))));
    return _mm512_castsi512_si256(with_parity(_mm512_castsi256_si512(t)));
}

// Σ scale·(w·x) over 64 weights: weight bytes 8, 25 or 43 by the code planes (low, high), the
// activation negated under `negative`, each lane's scale in the low 16 bits of `scale`.
inline __m512i iq2_step(__m512i sum, uint64_t low, uint64_t high, uint64_t negative, const int8_t* x, __m512i scale) {
    const __m512i w = _mm512_mask_mov_epi8(_mm512_mask_blend_epi8(low, _mm512_set1_epi8(8), _mm512_set1_epi8(25)),
                                           high, _mm512_set1_epi8(43));
    const __m512i xv = _mm512_loadu_si512(x);
    const __m512i xs = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
    return _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xs), scale);
}

// vpermd indices: lanes 0-7 take element a, lanes 8-15 element b.
inline __m512i two_halves(int a, int b) {
    return _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(a), _mm512_set1_epi32(b));
}

// Lane j of the looked-up codes (entries 8j..8j+7) as [low planes | high planes], 64 bits each.
inline __m512i code_planes(__m512i codes) {
    return _mm512_shuffle_epi8(codes, _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)));
}

// A block's integer sum for IQ2_XS and IQ2_S, whose 4-bit scales s are nibble k % 2 of
// scales[k / 2] for the weights 16k..16k+15.
inline __m512i iq2_block(const uint64_t* planes, const uint64_t* signs, const uint8_t* scale_nibbles, const BlockQ8K& x) {
    const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scale_nibbles));
    const __m128i nibbles = _mm_unpacklo_epi8(_mm_and_si128(packed, _mm_set1_epi8(0x0f)),
                                              _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0f)));
    const __m512i scales = _mm512_or_si512(_mm512_slli_epi32(_mm512_cvtepu8_epi32(nibbles), 1), _mm512_set1_epi32(1));
    __m512i sum = _mm512_setzero_si512();
    for (int j = 0; j < 4; ++j) {
        const __m512i quarters = _mm512_add_epi32(_mm512_set1_epi32(4 * j), _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
        sum = iq2_step(sum, planes[2 * j], planes[2 * j + 1], signs[j], x.qs + 64 * j, _mm512_permutexvar_epi32(quarters, scales));
    }
    return sum;
}

struct IQ2XXSAccumulator512 {
    __m512 scaled = _mm512_setzero_ps();

    void add(const BlockIQ2XXS& w, const BlockQ8K& x) {
        const __m512i q = _mm512_loadu_si512(w.qs);   // sub-block b: dwords 2b (grid indices) and 2b + 1
        const __m512i idx = _mm512_shuffle_epi8(q, _mm512_broadcast_i32x4(_mm_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 8, -1, 9, -1, 10, -1, 11, -1)));
        // 128-bit lane j: the low planes of entries 8j..8j+7, then their high planes
        alignas(64) uint64_t planes[8];
        _mm512_store_si512(planes, code_planes(lookup_codes(iq2xxs_codes, idx)));
        const __m512i words = _mm512_permutexvar_epi32(_mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15), q);
        alignas(32) uint64_t signs[4];   // step j: sign bits of weights 64j..64j+63
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), ksign_bytes(_mm512_castsi512_si256(words)));
        // 2s + 1 of sub-block b in dword b
        const __m512i scales = _mm512_ternarylogic_epi32(_mm512_srli_epi32(words, 27), _mm512_set1_epi32(0x1e), _mm512_set1_epi32(1), 0xea);
        __m512i sum = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            sum = iq2_step(sum, planes[2 * j], planes[2 * j + 1], signs[j], x.qs + 64 * j,
                           _mm512_permutexvar_epi32(two_halves(2 * j, 2 * j + 1), scales));
        }
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(x.d * (f16_scalar(w.d) * 0.125f)), _mm512_cvtepi32_ps(sum), scaled);
    }
    float total() const { return hsum(scaled); }
};

// IQ2_XS: word i of qs is group i's 9-bit index and its 7-bit sign index; 4-bit scales per 16.
struct IQ2XSAccumulator512 {
    __m512 scaled = _mm512_setzero_ps();

    void add(const BlockIQ2XS& w, const BlockQ8K& x) {
        const __m512i q = _mm512_loadu_si512(w.qs);
        alignas(64) uint64_t planes[8];
        _mm512_store_si512(planes, code_planes(lookup_codes(iq2xs_codes, _mm512_and_si512(q, _mm512_set1_epi16(0x1ff)))));
        alignas(32) uint64_t signs[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), _mm512_cvtepi16_epi8(with_parity(_mm512_srli_epi16(q, 9))));
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(x.d * (f16_scalar(w.d) * 0.125f)),
                                 _mm512_cvtepi32_ps(iq2_block(planes, signs, w.scales, x)), scaled);
    }
    float total() const { return hsum(scaled); }
};

// IQ2_S: 10-bit indices qs[4b + k] | bits 2k..2k+1 of qh[b] << 8, sign bits as they are.
struct IQ2SAccumulator512 {
    __m512 scaled = _mm512_setzero_ps();

    void add(const BlockIQ2S& w, const BlockQ8K& x) {
        // entry e = 4b + k: its qh byte b in word e, shifted right by 2k
        const __m256i qh = _mm256_shuffle_epi8(_mm256_set1_epi64x(static_cast<long long>(load_le64(w.qh))),
                                               _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                                                4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7));
        // (vpmovsxbw, as SIMDe lacks vpmovzxbw for the emulated test; the sign bits are cut off)
        const __m512i high = _mm512_and_si512(_mm512_srlv_epi16(_mm512_cvtepi8_epi16(qh), _mm512_set1_epi64(0x0006000400020000)),
                                              _mm512_set1_epi16(3));
        const __m512i idx = _mm512_ternarylogic_epi32(_mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs))),
                                                      _mm512_slli_epi16(high, 8), _mm512_set1_epi16(0xff), 0xec);   // (a & c) | b
        alignas(64) uint64_t planes[8];
        _mm512_store_si512(planes, code_planes(lookup_codes(iq2s_codes, idx)));
        uint64_t signs[4];
        std::memcpy(signs, w.signs, sizeof signs);
        scaled = _mm512_fmadd_ps(_mm512_set1_ps(x.d * (f16_scalar(w.d) * 0.125f)),
                                 _mm512_cvtepi32_ps(iq2_block(planes, signs, w.scales, x)), scaled);
    }
    float total() const { return hsum(scaled); }
};
using IQ2XXSKernel = IQ2XXSAccumulator512;
using IQ2XSKernel = IQ2XSAccumulator512;
using IQ2SKernel = IQ2SAccumulator512;
#else
using IQ2XXSKernel = IQ2XXSAccumulator;
using IQ2XSKernel = IQ2XSAccumulator;
using IQ2SKernel = IQ2SAccumulator;
#endif

// As run_shared_type (dot_x86_blocks.h), for the types of this file.
template <class Run>
bool run_iq_type(GgmlType type, const void* xq, int n, Run run) {
    const auto* x = static_cast<const BlockQ8K*>(xq);
    switch (type) {
        case GgmlType::IQ2_XXS: run(IQ2XXSKernel{}, static_cast<const BlockIQ2XXS*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ2_XS: run(IQ2XSKernel{}, static_cast<const BlockIQ2XS*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ1_S: run(IQ1SAccumulator{}, static_cast<const BlockIQ1S*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ1_M: run(IQ1MAccumulator{}, static_cast<const BlockIQ1M*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ3_XXS: run(IQ3XXSAccumulator{}, static_cast<const BlockIQ3XXS*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ2_S: run(IQ2SKernel{}, static_cast<const BlockIQ2S*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ3_S: run(IQ3SAccumulator{}, static_cast<const BlockIQ3S*>(nullptr), x, n / kQK); return true;
        case GgmlType::MXFP4:
            run(MXFP4Accumulator{}, static_cast<const BlockMXFP4*>(nullptr), static_cast<const BlockQ8_0*>(xq), n / kQ8);
            return true;
        default: return false;
    }
}
