// Row kernels of IQ3_XXS, IQ2_S, IQ3_S (× Q8_K) and MXFP4 (× Q8_0) on 256-bit vectors, with the
// primitives of dot_x86_blocks.h (vpmaddubsw + vpmaddwd for AVX2, vpdpbusd + vpdpwssd for
// AVX-512 VNNI). Included by dot_avx2.cpp and dot_avx512.cpp after dot_x86_blocks.h, inside
// namespace numatune { namespace { ... } }.
//
// Per 32 weights of an IQ type: the grid entries of the block's indices are loaded as 32- or
// 64-bit words into one vector (unsigned magnitudes, weight order), the 32 sign bits are spread
// to ±1 bytes and put on the activation with vpsignb (|w|·(x·sign) = w·x), and the products are
// summed with the sub-block's integer scale (2s + 1). Four products of magnitudes ≤ 62 with
// |x| ≤ 127 stay within the 16 bits that vpdpwssd's scaling reads. MXFP4 looks its 16 values
// up with vpshufb, as IQ4_NL does.
#pragma once
// (The including file includes quant_iq_b.h at file scope.)

// ±1 bytes from 32 sign bits: byte i is −1 where bit i is set, else +1.
inline __m256i sign_bytes(uint32_t bits) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(1));
}

// 32 weights: grid magnitudes g against activation bytes x with the weights' signs.
inline __m256i dot_grid(__m256i acc, __m256i g, const int8_t* x, uint32_t signs, __m256i scale) {
    return dot_scaled(acc, g, _mm256_sign_epi8(load_bytes(x), sign_bytes(signs)), scale);
}

inline __m256i grid4x8(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t e, uint32_t f, uint32_t g, uint32_t h) {
    return _mm256_setr_epi32(static_cast<int>(a), static_cast<int>(b), static_cast<int>(c), static_cast<int>(d),
                             static_cast<int>(e), static_cast<int>(f), static_cast<int>(g), static_cast<int>(h));
}

// ---- IQ3_XXS × Q8_K

struct IQ3XXSAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockIQ3XXS& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const uint8_t* q = w.qs + 8 * b;
            const uint32_t word = load_le32(w.scales_signs + 4 * b);
            const __m256i g = grid4x8(iq3xxs_grid[q[0]], iq3xxs_grid[q[1]], iq3xxs_grid[q[2]], iq3xxs_grid[q[3]],
                                      iq3xxs_grid[q[4]], iq3xxs_grid[q[5]], iq3xxs_grid[q[6]], iq3xxs_grid[q[7]]);
            const __m256i scale = scale_lanes(_mm256_set1_epi16(static_cast<short>(2 * (word >> 28) + 1)));
            sum = dot_grid(sum, g, x.qs + 32 * b, iq3xxs_sign_bits(word), scale);
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * (f16_scalar(w.d) * 0.25f)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

// ---- IQ2_S × Q8_K

struct IQ2SAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockIQ2S& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const __m256i g = _mm256_setr_epi64x(static_cast<long long>(iq2s_grid[iq2s_index(w, b, 0)]),
                                                 static_cast<long long>(iq2s_grid[iq2s_index(w, b, 1)]),
                                                 static_cast<long long>(iq2s_grid[iq2s_index(w, b, 2)]),
                                                 static_cast<long long>(iq2s_grid[iq2s_index(w, b, 3)]));
            // groups of 16: the low 128-bit lane has the first group's scale, the high the second's
            const __m256i scale = scale_lanes(_mm256_set_m128i(_mm_set1_epi16(static_cast<short>(2 * (w.scales[b] >> 4) + 1)),
                                                               _mm_set1_epi16(static_cast<short>(2 * (w.scales[b] & 0x0f) + 1))));
            sum = dot_grid(sum, g, x.qs + 32 * b, load_le32(w.signs + 4 * b), scale);
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * (f16_scalar(w.d) * 0.125f)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

// ---- IQ3_S × Q8_K

struct IQ3SAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockIQ3S& w, const BlockQ8K& x) {
        __m256i sum = _mm256_setzero_si256();
        for (int b = 0; b < 8; ++b) {
            const __m256i g = grid4x8(iq3s_grid[iq3s_index(w, b, 0)], iq3s_grid[iq3s_index(w, b, 1)],
                                      iq3s_grid[iq3s_index(w, b, 2)], iq3s_grid[iq3s_index(w, b, 3)],
                                      iq3s_grid[iq3s_index(w, b, 4)], iq3s_grid[iq3s_index(w, b, 5)],
                                      iq3s_grid[iq3s_index(w, b, 6)], iq3s_grid[iq3s_index(w, b, 7)]);
            const int s = (w.scales[b / 2] >> (4 * (b % 2))) & 0x0f;
            const __m256i scale = scale_lanes(_mm256_set1_epi16(static_cast<short>(2 * s + 1)));
            sum = dot_grid(sum, g, x.qs + 32 * b, load_le32(w.signs + 4 * b), scale);
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * f16_scalar(w.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

// ---- MXFP4 × Q8_0

struct MXFP4Accumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockMXFP4& w, const BlockQ8_0& x) {
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kMxfp4Values)));
        const __m256i values = _mm256_shuffle_epi8(table, legacy_nibbles(w.qs));
        const __m256i sum = dot_signed(_mm256_setzero_si256(), values, load_bytes(x.qs));
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(e8m0_half(w.e) * f16_scalar(x.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

// As run_shared_type (dot_x86_blocks.h), for the types of this file.
template <class Run>
bool run_iq_b_type(GgmlType type, const void* xq, int n, Run run) {
    const auto* q8_k = static_cast<const BlockQ8K*>(xq);
    switch (type) {
        case GgmlType::IQ3_XXS: run(IQ3XXSAccumulator{}, static_cast<const BlockIQ3XXS*>(nullptr), q8_k, n / kQK); return true;
        case GgmlType::IQ2_S: run(IQ2SAccumulator{}, static_cast<const BlockIQ2S*>(nullptr), q8_k, n / kQK); return true;
        case GgmlType::IQ3_S: run(IQ3SAccumulator{}, static_cast<const BlockIQ3S*>(nullptr), q8_k, n / kQK); return true;
        case GgmlType::MXFP4:
            run(MXFP4Accumulator{}, static_cast<const BlockMXFP4*>(nullptr), static_cast<const BlockQ8_0*>(xq), n / kQ8);
            return true;
        default: return false;
    }
}
