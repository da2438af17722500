// The scalar truth of IQ3_XXS, IQ2_S, IQ3_S and MXFP4 (quant_iq_b.h): each block is unpacked to
// signed integer values in weight order, an integer scale per group of 16 weights and one float
// factor, from which both the dequantised weights (in gguf.quants' order of operations, so the
// floats are the same bits) and the integer dot products follow.
#include <stdexcept>

#include "quant_iq_b.h"

namespace numatune {
namespace {

// A 256-weight IQ block: w[i] = factor · scale[i / 16] · q[i] (q = grid value with its sign).
struct IqBlock {
    int8_t q[kQK];
    int8_t scale[16];
    float factor;   // d / 4 (IQ3_XXS), d / 8 (IQ2_S), d (IQ3_S)
};

// The 4 or 8 byte values of a grid entry (iq_grids.h packs them little-endian).
template <class Entry>
void put_entry(Entry entry, uint32_t sign_bits, int first, int8_t* q) {
    for (int k = 0; k < static_cast<int>(sizeof(Entry)); ++k) {
        const int value = static_cast<int8_t>(entry >> (8 * k));
        q[first + k] = static_cast<int8_t>((sign_bits >> (first % 32 + k)) & 1 ? -value : value);
    }
}

IqBlock unpack_iq3xxs(const BlockIQ3XXS& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t word = load_le32(w.scales_signs + 4 * b);
        const uint32_t signs = iq3xxs_sign_bits(word);
        for (int k = 0; k < 8; ++k) put_entry(iq3xxs_grid[w.qs[8 * b + k]], signs, 32 * b + 4 * k, out.q);
        out.scale[2 * b] = out.scale[2 * b + 1] = static_cast<int8_t>(2 * (word >> 28) + 1);
    }
    out.factor = f16_to_f32(w.d) * 0.25f;
    return out;
}

IqBlock unpack_iq2s(const BlockIQ2S& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t signs = load_le32(w.signs + 4 * b);
        for (int k = 0; k < 4; ++k) put_entry(iq2s_grid[iq2s_index(w, b, k)], signs, 32 * b + 8 * k, out.q);
        out.scale[2 * b] = static_cast<int8_t>(2 * (w.scales[b] & 0x0f) + 1);
        out.scale[2 * b + 1] = static_cast<int8_t>(2 * (w.scales[b] >> 4) + 1);
    }
    out.factor = f16_to_f32(w.d) * 0.125f;
    return out;
}

IqBlock unpack_iq3s(const BlockIQ3S& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const uint32_t signs = load_le32(w.signs + 4 * b);
        for (int k = 0; k < 8; ++k) put_entry(iq3s_grid[iq3s_index(w, b, k)], signs, 32 * b + 4 * k, out.q);
        out.scale[2 * b] = out.scale[2 * b + 1] = static_cast<int8_t>(2 * ((w.scales[b / 2] >> (4 * (b % 2))) & 0x0f) + 1);
    }
    out.factor = f16_to_f32(w.d);
    return out;
}

IqBlock unpack_iq(GgmlType type, const uint8_t* block) {
    switch (type) {
        case GgmlType::IQ3_XXS: return unpack_iq3xxs(*reinterpret_cast<const BlockIQ3XXS*>(block));
        case GgmlType::IQ2_S: return unpack_iq2s(*reinterpret_cast<const BlockIQ2S*>(block));
        case GgmlType::IQ3_S: return unpack_iq3s(*reinterpret_cast<const BlockIQ3S*>(block));
        default: throw std::invalid_argument("unpack_iq: not IQ3_XXS, IQ2_S or IQ3_S");
    }
}

// gguf computes a group's step as d·(0.5 + s)·0.5 (IQ3_XXS), d·(0.5 + s)·0.25 (IQ2_S) and
// d·(1 + 2s) (IQ3_S), then step·|grid|·sign. Every one of these products is exact in float
// (11-bit d, 5-bit scale, 6-bit grid value), so factor·scale·q is the same number.
void dequantize_iq(GgmlType type, const uint8_t* row, int n, float* y) {
    const size_t bytes = type_info(type).block_bytes;
    for (int b = 0; b < n / kQK; ++b) {
        const IqBlock block = unpack_iq(type, row + b * bytes);
        for (int i = 0; i < kQK; ++i) {
            const float step = block.factor * block.scale[i / 16];
            const int q = block.q[i];
            y[kQK * b + i] = step * static_cast<float>(q < 0 ? -q : q) * (q < 0 ? -1.0f : 1.0f);
        }
    }
}

float dot_iq(GgmlType type, const uint8_t* row, const BlockQ8K* x, int blocks) {
    const size_t bytes = type_info(type).block_bytes;
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        const IqBlock w = unpack_iq(type, row + b * bytes);
        int32_t scaled = 0;
        for (int g = 0; g < 16; ++g) {
            int32_t dot = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) dot += w.q[i] * x[b].qs[i];
            scaled += w.scale[g] * dot;
        }
        sum += x[b].d * w.factor * static_cast<float>(scaled);
    }
    return sum;
}

void mxfp4_values(const BlockMXFP4& w, int8_t q[kQ8]) {
    for (int l = 0; l < kQ8 / 2; ++l) {
        q[l] = kMxfp4Values[w.qs[l] & 0x0f];
        q[l + 16] = kMxfp4Values[w.qs[l] >> 4];
    }
}

float dot_mxfp4(const BlockMXFP4* w, const BlockQ8_0* x, int blocks) {
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        int8_t q[kQ8];
        mxfp4_values(w[b], q);
        int32_t dot = 0;
        for (int i = 0; i < kQ8; ++i) dot += q[i] * x[b].qs[i];
        sum += e8m0_half(w[b].e) * f16_to_f32(x[b].d) * static_cast<float>(dot);
    }
    return sum;
}

}  // namespace

namespace iq_b {

bool handles(GgmlType type) {
    return type == GgmlType::IQ3_XXS || type == GgmlType::IQ2_S || type == GgmlType::IQ3_S || type == GgmlType::MXFP4;
}

void dequantize(GgmlType type, const void* row, int n, float* y) {
    if (type == GgmlType::MXFP4) {
        const auto* w = static_cast<const BlockMXFP4*>(row);
        for (int b = 0; b < n / kQ8; ++b) {
            int8_t q[kQ8];
            mxfp4_values(w[b], q);
            const float d = e8m0_half(w[b].e);
            for (int i = 0; i < kQ8; ++i) y[kQ8 * b + i] = d * static_cast<float>(q[i]);
        }
        return;
    }
    dequantize_iq(type, static_cast<const uint8_t*>(row), n, y);
}

float vec_dot(GgmlType type, const void* row, const void* xq, int n) {
    if (type == GgmlType::MXFP4) {
        return dot_mxfp4(static_cast<const BlockMXFP4*>(row), static_cast<const BlockQ8_0*>(xq), n / kQ8);
    }
    return dot_iq(type, static_cast<const uint8_t*>(row), static_cast<const BlockQ8K*>(xq), n / kQK);
}

}  // namespace iq_b
}  // namespace numatune
