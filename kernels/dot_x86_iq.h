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
// scaled once by its factor times the activation's d.
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

// Scale words for 32 weights: `low` over the first 16, `high` over the last 16.
inline __m256i half_scales(int low, int high) {
    return scale_lanes(_mm256_set_m128i(_mm_set1_epi16(static_cast<short>(high)), _mm_set1_epi16(static_cast<short>(low))));
}

// ±1 bytes from 32 sign bits: byte i is −1 where bit i is set, else +1.
inline __m256i sign_bytes(uint32_t bits) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(1));
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
    void add(const BlockIQ2XXS& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const uint32_t grid = load_le32(w.qs + 4 * b), signs = load_le32(w.qs + 4 * b + 2);
            const __m256i values = four_entries(iq2xxs_grid, grid & 0xff, (grid >> 8) & 0xff, (grid >> 16) & 0xff, grid >> 24);
            const __m256i masks = four_entries(iq_sign_masks.masks, signs & 0x7f, (signs >> 7) & 0x7f,
                                               (signs >> 14) & 0x7f, (signs >> 21) & 0x7f);
            const int scale = 2 * static_cast<int>(signs >> 28) + 1;
            sum = signed_step(sum, values, masks, x.qs + 32 * b, half_scales(scale, scale));
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ2XSAccumulator : IqAccumulatorBase {
    void add(const BlockIQ2XS& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const uint16_t* q = w.qs + 4 * b;
            const __m256i values = four_entries(iq2xs_grid, q[0] & 0x1ff, q[1] & 0x1ff, q[2] & 0x1ff, q[3] & 0x1ff);
            const __m256i masks = four_entries(iq_sign_masks.masks, q[0] >> 9, q[1] >> 9, q[2] >> 9, q[3] >> 9);
            const __m256i scales = half_scales(2 * (w.scales[b] & 0x0f) + 1, 2 * (w.scales[b] >> 4) + 1);
            sum = signed_step(sum, values, masks, x.qs + 32 * b, scales);
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ1SAccumulator : IqAccumulatorBase {
    void add(const BlockIQ1S& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const unsigned qh = w.qh[b];
            const uint8_t* qs = w.qs + 4 * b;
            const __m256i grid = four_entries(iq1s_grid, qs[0] | ((qh << 8) & 0x700), qs[1] | ((qh << 5) & 0x700),
                                              qs[2] | ((qh << 2) & 0x700), qs[3] | ((qh >> 1) & 0x700));
            const __m256i shifts = _mm256_set1_epi8(qh & 0x8000 ? -1 : 1);
            const int scale = 2 * ((qh >> 12) & 7) + 1;
            sum = iq1_step(sum, grid, shifts, x.qs + 32 * b, half_scales(scale, scale));
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ1MAccumulator : IqAccumulatorBase {
    // The 8 shift bytes of a group whose qh nibble has bit 3 set or not.
    static long long shift_of(unsigned nibble_bit) {
        return nibble_bit ? -1LL : static_cast<long long>(0x0101010101010101ull);
    }

    void add(const BlockIQ1M& w, const BlockQ8K& x) {
        uint16_t s[4];
        std::memcpy(s, w.scales, sizeof s);
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const unsigned h0 = w.qh[2 * b], h1 = w.qh[2 * b + 1];
            const uint8_t* qs = w.qs + 4 * b;
            const __m256i grid = four_entries(iq1s_grid, qs[0] | ((h0 & 7) << 8), qs[1] | ((h0 & 0x70) << 4),
                                              qs[2] | ((h1 & 7) << 8), qs[3] | ((h1 & 0x70) << 4));
            const __m256i shifts = _mm256_set_epi64x(shift_of(h1 & 0x80), shift_of(h1 & 0x08), shift_of(h0 & 0x80),
                                                     shift_of(h0 & 0x08));
            const unsigned packed = s[b / 2] >> (6 * (b % 2));
            sum = iq1_step(sum, grid, shifts, x.qs + 32 * b, half_scales(2 * (packed & 7) + 1, 2 * ((packed >> 3) & 7) + 1));
        }
        finish_block(sum, f16_scalar(iq1m_d(w)) * 0.125f, x.d);
    }
};

struct IQ3XXSAccumulator : IqAccumulatorBase {
    void add(const BlockIQ3XXS& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const uint8_t* q = w.qs + 8 * b;
            const uint32_t word = load_le32(w.scales_signs + 4 * b);
            const __m256i g = eight_entries(iq3xxs_grid, [q](int k) { return q[k]; });
            const int scale = 2 * static_cast<int>(word >> 28) + 1;
            sum = signed_step(sum, g, sign_bytes(ksign_bits(word)), x.qs + 32 * b, half_scales(scale, scale));
        }
        finish_block(sum, f16_scalar(w.d) * 0.25f, x.d);
    }
};

struct IQ2SAccumulator : IqAccumulatorBase {
    void add(const BlockIQ2S& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const __m256i g = four_entries(iq2s_grid, iq2s_index(w, b, 0), iq2s_index(w, b, 1), iq2s_index(w, b, 2),
                                           iq2s_index(w, b, 3));
            const __m256i scales = half_scales(2 * (w.scales[b] & 0x0f) + 1, 2 * (w.scales[b] >> 4) + 1);
            sum = signed_step(sum, g, sign_bytes(load_le32(w.signs + 4 * b)), x.qs + 32 * b, scales);
        }
        finish_block(sum, f16_scalar(w.d) * 0.125f, x.d);
    }
};

struct IQ3SAccumulator : IqAccumulatorBase {
    void add(const BlockIQ3S& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const __m256i g = eight_entries(iq3s_grid, [&w, b](int k) { return iq3s_index(w, b, k); });
            const int scale = 2 * ((w.scales[b / 2] >> (4 * (b % 2))) & 0x0f) + 1;
            sum = signed_step(sum, g, sign_bytes(load_le32(w.signs + 4 * b)), x.qs + 32 * b, half_scales(scale, scale));
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

// As run_shared_type (dot_x86_blocks.h), for the types of this file.
template <class Run>
bool run_iq_type(GgmlType type, const void* xq, int n, Run run) {
    const auto* x = static_cast<const BlockQ8K*>(xq);
    switch (type) {
        case GgmlType::IQ2_XXS: run(IQ2XXSAccumulator{}, static_cast<const BlockIQ2XXS*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ2_XS: run(IQ2XSAccumulator{}, static_cast<const BlockIQ2XS*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ1_S: run(IQ1SAccumulator{}, static_cast<const BlockIQ1S*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ1_M: run(IQ1MAccumulator{}, static_cast<const BlockIQ1M*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ3_XXS: run(IQ3XXSAccumulator{}, static_cast<const BlockIQ3XXS*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ2_S: run(IQ2SAccumulator{}, static_cast<const BlockIQ2S*>(nullptr), x, n / kQK); return true;
        case GgmlType::IQ3_S: run(IQ3SAccumulator{}, static_cast<const BlockIQ3S*>(nullptr), x, n / kQK); return true;
        case GgmlType::MXFP4:
            run(MXFP4Accumulator{}, static_cast<const BlockMXFP4*>(nullptr), static_cast<const BlockQ8_0*>(xq), n / kQ8);
            return true;
        default: return false;
    }
}
