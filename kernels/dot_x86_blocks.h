// Row kernels of the K-quants Q2_K, Q3_K, Q5_K, the legacy Q4_0, Q4_1, Q5_0, Q5_1 and the
// non-uniform IQ4_NL, on 256-bit vectors, and IQ4_XS's scale unpacking: included by dot_avx2.cpp
// and by dot_avx512.cpp, so each compiles them with its own instruction set. (Q4_0's and Q5_0's
// kernels here serve only the AVX-512 variant's tail blocks: dot_avx2.cpp has its own, which
// need a per-gemv copy of the activation; IQ4_XS has its own kernel in each file.) One primitive
// differs:
//
//  * AVX2: vpmaddubsw (unsigned weight bytes × signed activation bytes, pairs into 16-bit words),
//    then vpmaddwd by 16-bit scale words (pairs into 32-bit lanes);
//  * AVX-512 (NUMATUNE_DOT_VNNI, with AVX512-VL): vpdpbusd adds groups of four products into
//    32-bit lanes, and vpdpwssd multiplies a lane by its scale held in the low 16 bits with zero
//    above (a lane's sum of four products fits in 16 bits here: at most 4·31·127).
//
// Every block's values are brought to unsigned bytes in weight order, so that one load of 32
// activation bytes meets them; an offset (Q3_K's −4, Q4_0's −8, Q5_0's −16) is either folded in
// through the activation's sums (Q3_K: bsums) or handled with the sign trick of Q8_0 (|w| against
// x with w's sign), and a minimum (Q2_K, Q5_K, Q4_1, Q5_1) through the activation's sums.
//
// Included inside namespace numatune { namespace { ... } } after the including file's hsum(__m256).
#pragma once

// ---- the primitive

#if defined(NUMATUNE_DOT_VNNI)
// Scale words (the scale in both 16-bit halves of a lane) as vpdpwssd wants them: low half only.
inline __m256i scale_lanes(__m256i words) { return _mm256_and_si256(words, _mm256_set1_epi32(0xffff)); }
// The scaled products start from zero and are added to acc, rather than accumulated into acc by
// vpdpwssd: a block's eight or sixteen steps then chain through a 1-cycle add, not through
// vpdpwssd's latency (Q3_K rows in L2 went from 4.3 to 5.2 GB/s on a shared core).
inline __m256i dot_scaled(__m256i acc, __m256i w, __m256i x, __m256i scale) {
    const __m256i zero = _mm256_setzero_si256();
    return _mm256_add_epi32(acc, _mm256_dpwssd_epi32(zero, _mm256_dpbusd_epi32(zero, w, x), scale));
}
inline __m256i dot_plain(__m256i acc, __m256i w, __m256i x) { return _mm256_dpbusd_epi32(acc, w, x); }
#else
inline __m256i scale_lanes(__m256i words) { return words; }
inline __m256i dot_scaled(__m256i acc, __m256i w, __m256i x, __m256i scale) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), scale));
}
inline __m256i dot_plain(__m256i acc, __m256i w, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}
#endif

// Signed weight bytes (−16..15) against signed activation bytes: |w| against x with w's sign.
inline __m256i dot_signed(__m256i acc, __m256i w, __m256i x) {
    return dot_plain(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
}

// The same with a 16-bit scale word per pair, for weights up to ±127 (IQ4_*), whose sums of four
// products do not fit the 16 bits that vpdpwssd's scaling needs: vpmaddubsw + vpmaddwd in either
// instruction set (a pair sums to at most 2·127·127, within vpmaddubsw's 16 bits).
inline __m256i dot_signed_scaled(__m256i acc, __m256i w, __m256i x, __m256i words) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)), words));
}

inline __m256i load_bytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// ---- vpshufb masks over 16-bit scale words

// Word 2k of the 128-bit lane in every word of the low lane, word 2k+1 in the high lane: the scales
// of two consecutive groups of 16 weights, for 32 weights in one vector.
inline __m256i pair_broadcast_mask(int k) {
    const short low = static_cast<short>((4 * k) | ((4 * k + 1) << 8));
    const short high = static_cast<short>((4 * k + 2) | ((4 * k + 3) << 8));
    return _mm256_setr_epi16(low, low, low, low, low, low, low, low,
                             high, high, high, high, high, high, high, high);
}

// Over the 16 bytes of Q4_K/Q5_K scales (sc[0..7], m[0..7]) in both lanes: every word = sc[s].
inline __m256i scale_words_mask(int s) { return _mm256_set1_epi16(static_cast<short>(0x8000 | s)); }

// The words m0 m0 m1 m1 .. m7 m7, which vpmaddwd with the activation's 16 sums of 16 turns into
// m[s]·(sum of sub-block s) in 32-bit lane s.
inline __m256i min_pairs_mask() {
    return _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1,
                            12, -1, 12, -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1);
}

// The scale words of the 32 weights 128h + 32j .. +31 (groups 8h + 2j and 8h + 2j + 1) from the
// 16 group scales of a block as words.
inline __m256i group_pair_scales(__m256i scales16, int h, int j) {
    const __m256i half = h == 0 ? _mm256_permute4x64_epi64(scales16, 0x44) : _mm256_permute4x64_epi64(scales16, 0xee);
    return scale_lanes(_mm256_shuffle_epi8(half, pair_broadcast_mask(j)));
}

// ---- scales of the 6-bit K-quant formats, unpacked in registers (q4k_unpack_scales and
// q3k_unpack_scales of quant.h write them to memory, and reading those four 32-bit stores back as
// one 16-byte vector stalls store forwarding: it cost Q3_K and Q5_K a third of their time in L2)

// Q4_K's and Q5_K's sc[0..7] in bytes 0-7 and m[0..7] in bytes 8-15. The 16-byte load reads 4
// bytes past the 12 bytes of scales (still inside the block).
template <class Block>
__m128i q4k_scales_and_mins(const Block& w) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));   // words w0 w1 w2 -
    const __m128i low_six = _mm_and_si128(packed, _mm_set1_epi32(0x3f3f3f3f));            // sc[0..3], m[0..3]
    const __m128i top_two = _mm_and_si128(_mm_srli_epi32(packed, 2), _mm_set1_epi32(0x30303030));
    const __m128i w2 = _mm_shuffle_epi32(packed, 0xaa);
    const __m128i low_four = _mm_and_si128(_mm_srlv_epi32(w2, _mm_setr_epi32(0, 4, 0, 4)), _mm_set1_epi32(0x0f0f0f0f));
    const __m128i upper = _mm_or_si128(low_four, top_two);                                 // sc[4..7], m[4..7]
    return _mm_unpacklo_epi32(low_six, upper);
}

// Q3_K's 16 signed scales s − 32 in group order (q3k_unpack_scales in registers). The scales are
// the block's last bytes but its d, so they are read as 8 + 4 bytes, not past the block.
inline __m128i q3k_scales(const BlockQ3K& w) {
    uint32_t w2;
    std::memcpy(&w2, w.scales + 8, sizeof w2);
    const __m128i packed = _mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.scales)),
                                            static_cast<int>(w2), 2);                      // words w0 w1 w2 -
    const __m128i low = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(packed, 0x44), _mm_setr_epi32(0, 0, 4, 4)),
                                      _mm_set1_epi32(0x0f0f0f0f));                        // w0 w1 w0>>4 w1>>4
    const __m128i top = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(packed, 0xaa), _mm_setr_epi32(0, 2, 4, 6)),
                                      _mm_set1_epi32(0x03030303));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi32(top, 4)), _mm_set1_epi8(32));
}

// ---- Q2_K × Q8_K

struct Q2KAccumulator {
    __m256 scaled = _mm256_setzero_ps();   // d·Σ sc·(q·x)
    __m256 mins = _mm256_setzero_ps();     // dmin·Σ m·(Σx)

    void add(const BlockQ2K& w, const BlockQ8K& x) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
        const __m128i low_nibbles = _mm_set1_epi8(0x0f);
        const __m256i scales16 = _mm256_cvtepu8_epi16(_mm_and_si128(packed, low_nibbles));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles));
        const __m256i min_terms = _mm256_madd_epi16(mins16, load_bytes(x.bsums));
        const float dx = x.d;
        mins = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16_scalar(w.dmin)), _mm256_cvtepi32_ps(min_terms), mins);

        const __m256i two_bits = _mm256_set1_epi8(3);
        __m256i sum = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i q = load_bytes(w.qs + 32 * h);
            for (int j = 0; j < 4; ++j) {
                const __m256i values = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two_bits);
                sum = dot_scaled(sum, values, load_bytes(x.qs + 128 * h + 32 * j), group_pair_scales(scales16, h, j));
            }
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16_scalar(w.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return _mm256_sub_ps(scaled, mins); }
    float total() const { return hsum(lanes()); }
};

// ---- Q3_K × Q8_K

struct Q3KAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const BlockQ3K& w, const BlockQ8K& x) {
        const __m256i scales16 = _mm256_cvtepi8_epi16(q3k_scales(w));
        // Dotted as unsigned u = q + 4 in 0..7: Σ sc·(u − 4)·x = Σ sc·u·x − 4·Σ sc·bsum.
        __m256i sum = _mm256_sub_epi32(_mm256_setzero_si256(),
                                       _mm256_slli_epi32(_mm256_madd_epi16(scales16, load_bytes(x.bsums)), 2));
        const __m256i two_bits = _mm256_set1_epi8(3), bit_two = _mm256_set1_epi8(4);
        const __m256i hmask = load_bytes(w.hmask);
        for (int h = 0; h < 2; ++h) {
            const __m256i q = load_bytes(w.qs + 32 * h);
            for (int j = 0; j < 4; ++j) {
                // bit k = 4h + j of each hmask byte, moved to bit 2 within its byte and kept alone
                const int k = 4 * h + j;
                const __m256i moved = k <= 2 ? _mm256_slli_epi16(hmask, 2 - k) : _mm256_srli_epi16(hmask, k - 2);
                const __m256i values = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two_bits),
                                                       _mm256_and_si256(moved, bit_two));
                sum = dot_scaled(sum, values, load_bytes(x.qs + 128 * h + 32 * j), group_pair_scales(scales16, h, j));
            }
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * f16_scalar(w.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

// ---- Q5_K × Q8_K

struct Q5KAccumulator {
    __m256 scaled = _mm256_setzero_ps();   // d·Σ sc·(q·x)
    __m256 mins = _mm256_setzero_ps();     // dmin·Σ m·(Σx)

    void add(const BlockQ5K& w, const BlockQ8K& x) {
        const __m256i bytes = _mm256_broadcastsi128_si256(q4k_scales_and_mins(w));   // bytes 0-7: sc, 8-15: m
        const __m256i min_terms = _mm256_madd_epi16(_mm256_shuffle_epi8(bytes, min_pairs_mask()), load_bytes(x.bsums));
        mins = _mm256_fmadd_ps(_mm256_set1_ps(x.d * f16_scalar(w.dmin)), _mm256_cvtepi32_ps(min_terms), mins);

        const __m256i low_nibbles = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
        const __m256i qh = load_bytes(w.qh);
        __m256i sum = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {   // run j: sub-block 2j in the low nibbles, 2j+1 in the high
            const __m256i q = load_bytes(w.qs + 32 * j);
            const __m256i high_lo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), one), 4);
            const __m256i high_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j + 1), one), 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, low_nibbles), high_lo);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low_nibbles), high_hi);
            sum = dot_scaled(sum, lo, load_bytes(x.qs + 64 * j), scale_lanes(_mm256_shuffle_epi8(bytes, scale_words_mask(2 * j))));
            sum = dot_scaled(sum, hi, load_bytes(x.qs + 64 * j + 32),
                             scale_lanes(_mm256_shuffle_epi8(bytes, scale_words_mask(2 * j + 1))));
        }
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(x.d * f16_scalar(w.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return _mm256_sub_ps(scaled, mins); }
    float total() const { return hsum(lanes()); }
};

// ---- legacy blocks

// The 32 4-bit values of a legacy block in weight order: byte l's low nibble is weight l, its
// high nibble weight 16 + l.
inline __m256i legacy_nibbles(const uint8_t qs[16]) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i low = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low), _mm_and_si128(q, low));
}

// Bit i of Q5_0/Q5_1's qh as 0x10 in byte i (the fifth bit of weight i).
inline __m256i legacy_fifth_bits(const uint8_t qh[4]) {
    uint32_t bits;
    std::memcpy(&bits, qh, sizeof bits);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

// IQ4_NL's grid values of 32 nibbles (vpshufb as a 16-entry table lookup).
inline __m256i iq4_values(const uint8_t qs[16]) {
    const __m256i grid = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
    return _mm256_shuffle_epi8(grid, legacy_nibbles(qs));
}

template <class Block>
__m256i legacy_values(const Block& w) {
    if constexpr (std::is_same_v<Block, BlockQ4_0> || std::is_same_v<Block, BlockQ4_1>) return legacy_nibbles(w.qs);
    else if constexpr (std::is_same_v<Block, BlockIQ4NL>) return iq4_values(w.qs);
    else return _mm256_or_si256(legacy_nibbles(w.qs), legacy_fifth_bits(w.qh));
}

// Q4_0, Q5_0 and IQ4_NL × Q8_0: w = d·(q − offset) (IQ4_NL: d·grid[q], offset 0).
template <class Block, int kOffset>
struct LegacySymmetricAccumulator {
    __m256 scaled = _mm256_setzero_ps();

    void add(const Block& w, const BlockQ8_0& x) {
        __m256i values = legacy_values(w);
        if constexpr (kOffset != 0) values = _mm256_sub_epi8(values, _mm256_set1_epi8(kOffset));
        const __m256i sum = dot_signed(_mm256_setzero_si256(), values, load_bytes(x.qs));
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(w.d) * f16_scalar(x.d)), _mm256_cvtepi32_ps(sum), scaled);
    }

    __m256 lanes() const { return scaled; }
    float total() const { return hsum(lanes()); }
};

// Q4_1 and Q5_1 × Q8_1: w = d·q + m, so Σ w·x = d·dx·Σ q·xq + m·dx·Σ xq.
template <class Block>
struct LegacyOffsetAccumulator {
    __m256 scaled = _mm256_setzero_ps();
    float offsets = 0;

    void add(const Block& w, const BlockQ8_1& x) {
        const float dx = f16_scalar(x.d);
        const __m256i sum = dot_plain(_mm256_setzero_si256(), legacy_values(w), load_bytes(x.qs));
        scaled = _mm256_fmadd_ps(_mm256_set1_ps(f16_scalar(w.d) * dx), _mm256_cvtepi32_ps(sum), scaled);
        offsets += f16_scalar(w.m) * dx * x.sum;
    }

    __m256 lanes() const { return _mm256_add_ps(scaled, _mm256_setr_ps(offsets, 0, 0, 0, 0, 0, 0, 0)); }
    float total() const { return hsum(lanes()); }
};

using Q4_0Accumulator = LegacySymmetricAccumulator<BlockQ4_0, 8>;
using Q5_0Accumulator = LegacySymmetricAccumulator<BlockQ5_0, 16>;
using Q4_1Accumulator = LegacyOffsetAccumulator<BlockQ4_1>;
using Q5_1Accumulator = LegacyOffsetAccumulator<BlockQ5_1>;
using IQ4NLAccumulator = LegacySymmetricAccumulator<BlockIQ4NL, 0>;

// ---- IQ4_XS × Q8_K

// The eight 6-bit scales of an IQ4_XS block, one byte per sub-block: the low four bits from the
// nibbles of scales_l, the top two from the bit pairs of scales_h, each spread to bytes by three
// shift-or-mask steps (what pdep does, without BMI2).
inline uint64_t iq4xs_scale_bytes(uint32_t low_nibbles, uint16_t high_pairs) {
    uint64_t low = low_nibbles, high = high_pairs;
    low = (low | low << 16) & 0x0000ffff0000ffffull;
    low = (low | low << 8) & 0x00ff00ff00ff00ffull;
    low = (low | low << 4) & 0x0f0f0f0f0f0f0f0full;
    high = (high | high << 24) & 0x000000ff000000ffull;
    high = (high | high << 12) & 0x000f000f000f000full;
    high = (high | high << 6) & 0x0303030303030303ull;
    return low | high << 4;
}

// The eight scales s − 32 of an IQ4_XS block, as signed bytes 0-7.
inline __m128i iq4xs_scales8(const BlockIQ4XS& w) {
    uint32_t low_bits;
    std::memcpy(&low_bits, w.scales_l, sizeof low_bits);
    return _mm_sub_epi8(_mm_cvtsi64_si128(static_cast<long long>(iq4xs_scale_bytes(low_bits, w.scales_h))), _mm_set1_epi8(32));
}

// ---- dispatch

// Runs the kernel of a type of this file as run(Accumulator{}, (const Block*) nullptr, activation,
// blocks), the including file's gemv over blocks; false for a type that is not one of them (Q4_0,
// Q5_0 and IQ4_XS run kernels of the including files).
template <class Run>
bool run_shared_type(GgmlType type, const void* xq, int n, Run run) {
    const auto* q8_k = static_cast<const BlockQ8K*>(xq);
    const auto* q8_0 = static_cast<const BlockQ8_0*>(xq);
    const auto* q8_1 = static_cast<const BlockQ8_1*>(xq);
    switch (type) {
        case GgmlType::Q2_K: run(Q2KAccumulator{}, static_cast<const BlockQ2K*>(nullptr), q8_k, n / kQK); return true;
        case GgmlType::Q3_K: run(Q3KAccumulator{}, static_cast<const BlockQ3K*>(nullptr), q8_k, n / kQK); return true;
        case GgmlType::Q5_K: run(Q5KAccumulator{}, static_cast<const BlockQ5K*>(nullptr), q8_k, n / kQK); return true;
        case GgmlType::IQ4_NL: run(IQ4NLAccumulator{}, static_cast<const BlockIQ4NL*>(nullptr), q8_0, n / kQ8); return true;
        case GgmlType::Q4_1: run(Q4_1Accumulator{}, static_cast<const BlockQ4_1*>(nullptr), q8_1, n / kQ8); return true;
        case GgmlType::Q5_1: run(Q5_1Accumulator{}, static_cast<const BlockQ5_1*>(nullptr), q8_1, n / kQ8); return true;
        default: return false;
    }
}
