// The scalar truth of the codebook types and MXFP4 (quant_iq.h): one decoding of a block to
// integers (IqBlock), from which both the dequantized weights and the integer dot products follow.
#include <stdexcept>

#include "quant_iq.h"

namespace numatune {
namespace {

// A block as integers: w[i] = factor · scale[i / 16] · q[i], i < weights (256; MXFP4 32).
struct IqBlock {
    int8_t q[kQK];
    int scale[kQK / 16];
    float factor;
    int weights;
};

// The 4 or 8 byte values of a codebook entry (iq_grids.h packs them little-endian) at weights
// first.. of the block, each negated where its bit of the sub-block's 32 sign bits is set.
template <class Entry>
void put_entry(Entry entry, uint32_t sign_bits, int first, int8_t* q) {
    for (int k = 0; k < static_cast<int>(sizeof(Entry)); ++k) {
        const int value = static_cast<int8_t>(entry >> (8 * k));
        q[first + k] = static_cast<int8_t>((sign_bits >> (first % 32 + k)) & 1 ? -value : value);
    }
}

// 8 weights of an IQ1 type: 8·grid + 1, or 8·grid − 1 with a negative shift.
void put_shifted(uint64_t entry, bool negative_shift, int first, int8_t* q) {
    for (int k = 0; k < 8; ++k) q[first + k] = static_cast<int8_t>(8 * static_cast<int8_t>(entry >> (8 * k)) + (negative_shift ? -1 : 1));
}

// Both groups of 16 of sub-block b get one scale 2s + 1.
void sub_block_scale(IqBlock& out, int b, int s) { out.scale[2 * b] = out.scale[2 * b + 1] = 2 * s + 1; }

IqBlock decode_iq2xxs(const BlockIQ2XXS& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t grid = load_le32(w.qs + 4 * b), word = load_le32(w.qs + 4 * b + 2);
        for (int j = 0; j < 4; ++j) put_entry(iq2xxs_grid[(grid >> (8 * j)) & 0xff], ksign_bits(word), 32 * b + 8 * j, out.q);
        sub_block_scale(out, b, static_cast<int>(word >> 28));
    }
    out.factor = f16_to_f32(w.d) * 0.125f;
    return out;
}

IqBlock decode_iq2xs(const BlockIQ2XS& w) {
    IqBlock out{};
    for (int i = 0; i < kQK / 8; ++i) {
        put_entry(iq2xs_grid[w.qs[i] & 0x1ff], static_cast<uint32_t>(iq_ksigns[w.qs[i] >> 9]) << (8 * (i % 4)), 8 * i, out.q);
    }
    for (int k = 0; k < kQK / 16; ++k) out.scale[k] = 2 * ((w.scales[k / 2] >> (4 * (k % 2))) & 0x0f) + 1;
    out.factor = f16_to_f32(w.d) * 0.125f;
    return out;
}

IqBlock decode_iq1s(const BlockIQ1S& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const int qh = w.qh[b];
        for (int j = 0; j < 4; ++j) {
            put_shifted(iq1s_grid[w.qs[4 * b + j] | (((qh >> (3 * j)) & 7) << 8)], (qh & 0x8000) != 0, 32 * b + 8 * j, out.q);
        }
        sub_block_scale(out, b, (qh >> 12) & 7);
    }
    out.factor = f16_to_f32(w.d) * 0.125f;
    return out;
}

IqBlock decode_iq1m(const BlockIQ1M& w) {
    IqBlock out{};
    for (int i = 0; i < kQK / 8; ++i) {
        const int nibble = (w.qh[i / 2] >> (4 * (i % 2))) & 0x0f;
        put_shifted(iq1s_grid[w.qs[i] | ((nibble & 7) << 8)], (nibble & 8) != 0, 8 * i, out.q);
    }
    uint16_t scales[4];
    std::memcpy(scales, w.scales, sizeof scales);
    for (int k = 0; k < kQK / 16; ++k) out.scale[k] = 2 * ((scales[k / 4] >> (3 * (k % 4))) & 7) + 1;
    out.factor = f16_to_f32(iq1m_d(w)) * 0.125f;
    return out;
}

IqBlock decode_iq3xxs(const BlockIQ3XXS& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t word = load_le32(w.scales_signs + 4 * b);
        for (int k = 0; k < 8; ++k) put_entry(iq3xxs_grid[w.qs[8 * b + k]], ksign_bits(word), 32 * b + 4 * k, out.q);
        sub_block_scale(out, b, static_cast<int>(word >> 28));
    }
    out.factor = f16_to_f32(w.d) * 0.25f;
    return out;
}

IqBlock decode_iq2s(const BlockIQ2S& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t signs = load_le32(w.signs + 4 * b);
        for (int k = 0; k < 4; ++k) put_entry(iq2s_grid[iq2s_index(w, b, k)], signs, 32 * b + 8 * k, out.q);
        out.scale[2 * b] = 2 * (w.scales[b] & 0x0f) + 1;
        out.scale[2 * b + 1] = 2 * (w.scales[b] >> 4) + 1;
    }
    out.factor = f16_to_f32(w.d) * 0.125f;
    return out;
}

IqBlock decode_iq3s(const BlockIQ3S& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t signs = load_le32(w.signs + 4 * b);
        for (int k = 0; k < 8; ++k) put_entry(iq3s_grid[iq3s_index(w, b, k)], signs, 32 * b + 4 * k, out.q);
        sub_block_scale(out, b, (w.scales[b / 2] >> (4 * (b % 2))) & 0x0f);
    }
    out.factor = f16_to_f32(w.d);
    return out;
}

IqBlock decode_mxfp4(const BlockMXFP4& w) {
    IqBlock out{};
    for (int l = 0; l < kQ8 / 2; ++l) {
        out.q[l] = kMxfp4Values[w.qs[l] & 0x0f];
        out.q[l + 16] = kMxfp4Values[w.qs[l] >> 4];
    }
    out.scale[0] = out.scale[1] = 1;
    out.factor = e8m0_half(w.e);
    return out;
}

IqBlock decode(GgmlType type, const uint8_t* block) {
    switch (type) {
        case GgmlType::IQ2_XXS: return decode_iq2xxs(*reinterpret_cast<const BlockIQ2XXS*>(block));
        case GgmlType::IQ2_XS: return decode_iq2xs(*reinterpret_cast<const BlockIQ2XS*>(block));
        case GgmlType::IQ1_S: return decode_iq1s(*reinterpret_cast<const BlockIQ1S*>(block));
        case GgmlType::IQ1_M: return decode_iq1m(*reinterpret_cast<const BlockIQ1M*>(block));
        case GgmlType::IQ3_XXS: return decode_iq3xxs(*reinterpret_cast<const BlockIQ3XXS*>(block));
        case GgmlType::IQ2_S: return decode_iq2s(*reinterpret_cast<const BlockIQ2S*>(block));
        case GgmlType::IQ3_S: return decode_iq3s(*reinterpret_cast<const BlockIQ3S*>(block));
        case GgmlType::MXFP4: return decode_mxfp4(*reinterpret_cast<const BlockMXFP4*>(block));
        default: throw std::invalid_argument("iq::decode: not a codebook type or MXFP4");
    }
}

// Block b of a row, decoded; blocks are type_info(type).block_weights weights apart.
IqBlock decode_block(GgmlType type, const void* row, int b) {
    const TypeInfo& info = type_info(type);
    IqBlock block = decode(type, static_cast<const uint8_t*>(row) + static_cast<size_t>(b) * info.block_bytes);
    block.weights = info.block_weights;
    return block;
}

// Block b of the activation as its float scale and int8 values (Q8_0 for MXFP4, else Q8_K).
struct ActivationBlock {
    float d;
    const int8_t* qs;
};

ActivationBlock activation_block(GgmlType type, const void* xq, int b) {
    if (type_info(type).activation == ActivationFormat::q8_0) {
        const BlockQ8_0& x = static_cast<const BlockQ8_0*>(xq)[b];
        return {f16_to_f32(x.d), x.qs};
    }
    const BlockQ8K& x = static_cast<const BlockQ8K*>(xq)[b];
    return {x.d, x.qs};
}

}  // namespace

namespace iq {

bool handles(GgmlType type) {
    switch (type) {
        case GgmlType::IQ2_XXS: case GgmlType::IQ2_XS: case GgmlType::IQ1_S: case GgmlType::IQ1_M:
        case GgmlType::IQ3_XXS: case GgmlType::IQ2_S: case GgmlType::IQ3_S: case GgmlType::MXFP4:
            return true;
        default: return false;
    }
}

// factor·scale·q is exact in float (quant_iq.h), so this is gguf's number to the bit.
void dequantize(GgmlType type, const void* row, int n, float* y) {
    const int weights = type_info(type).block_weights;
    for (int b = 0; b < n / weights; ++b) {
        const IqBlock block = decode_block(type, row, b);
        for (int i = 0; i < weights; ++i) {
            y[weights * b + i] = block.factor * static_cast<float>(block.scale[i / 16]) * static_cast<float>(block.q[i]);
        }
    }
}

float vec_dot(GgmlType type, const void* row, const void* xq, int n) {
    float sum = 0;
    for (int b = 0; b < n / type_info(type).block_weights; ++b) {
        const IqBlock w = decode_block(type, row, b);
        const ActivationBlock x = activation_block(type, xq, b);
        int32_t scaled = 0;
        for (int g = 0; g < w.weights / 16; ++g) {
            int32_t dot = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) dot += w.q[i] * x.qs[i];
            scaled += w.scale[g] * dot;
        }
        sum += x.d * w.factor * static_cast<float>(scaled);
    }
    return sum;
}

}  // namespace iq
}  // namespace numatune
