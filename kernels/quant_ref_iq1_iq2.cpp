// The scalar truth of IQ1_S, IQ1_M, IQ2_XXS and IQ2_XS (iq1_iq2.h): one decoding of a block to
// integers, used by both the dequantization and the dot product.
#include <stdexcept>

#include "iq1_iq2.h"
#include "iq_grids.h"

namespace numatune {
namespace {

// A block as integers: w[i] = d·scale[i / 16]·q[i] / 8, scale = 2s + 1.
struct IqBlock {
    int8_t q[kQK];
    int scale[kQK / 16];
    float d;
};

int8_t grid_value(const uint64_t* grid, int index, int k) {
    return static_cast<int8_t>(grid[index] >> (8 * k));
}

// Group i of 8 weights from a grid entry and 8 sign bits (bit k set: value k negated).
void signed_group(const uint64_t* grid, int index, uint8_t signs, int8_t* q) {
    for (int k = 0; k < 8; ++k) {
        const int8_t v = grid_value(grid, index, k);
        q[k] = static_cast<int8_t>((signs >> k) & 1 ? -v : v);
    }
}

// Group of 8 weights of an IQ1 type: 8·grid + 1 or 8·grid − 1.
void shifted_group(int index, bool negative_shift, int8_t* q) {
    for (int k = 0; k < 8; ++k) q[k] = static_cast<int8_t>(8 * grid_value(iq1s_grid, index, k) + (negative_shift ? -1 : 1));
}

IqBlock decode_iq2xxs(const BlockIQ2XXS& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        uint32_t words[2];
        std::memcpy(words, w.qs + 4 * b, sizeof words);
        for (int j = 0; j < 4; ++j) {
            signed_group(iq2xxs_grid, (words[0] >> (8 * j)) & 0xff, iq_ksigns[(words[1] >> (7 * j)) & 0x7f],
                         out.q + 32 * b + 8 * j);
        }
        out.scale[2 * b] = out.scale[2 * b + 1] = 2 * static_cast<int>(words[1] >> 28) + 1;
    }
    out.d = f16_to_f32(w.d);
    return out;
}

IqBlock decode_iq2xs(const BlockIQ2XS& w) {
    IqBlock out{};
    for (int i = 0; i < kQK / 8; ++i) signed_group(iq2xs_grid, w.qs[i] & 0x1ff, iq_ksigns[w.qs[i] >> 9], out.q + 8 * i);
    for (int k = 0; k < kQK / 16; ++k) out.scale[k] = 2 * ((w.scales[k / 2] >> (4 * (k % 2))) & 0x0f) + 1;
    out.d = f16_to_f32(w.d);
    return out;
}

IqBlock decode_iq1s(const BlockIQ1S& w) {
    IqBlock out{};
    for (int b = 0; b < 8; ++b) {
        const int qh = w.qh[b];
        for (int j = 0; j < 4; ++j) {
            shifted_group(w.qs[4 * b + j] | (((qh >> (3 * j)) & 7) << 8), (qh & 0x8000) != 0, out.q + 32 * b + 8 * j);
        }
        out.scale[2 * b] = out.scale[2 * b + 1] = 2 * ((qh >> 12) & 7) + 1;
    }
    out.d = f16_to_f32(w.d);
    return out;
}

IqBlock decode_iq1m(const BlockIQ1M& w) {
    IqBlock out{};
    for (int i = 0; i < kQK / 8; ++i) {
        const int nibble = (w.qh[i / 2] >> (4 * (i % 2))) & 0x0f;
        shifted_group(w.qs[i] | ((nibble & 7) << 8), (nibble & 8) != 0, out.q + 8 * i);
    }
    uint16_t scales[4];
    std::memcpy(scales, w.scales, sizeof scales);
    for (int k = 0; k < kQK / 16; ++k) out.scale[k] = 2 * ((scales[k / 4] >> (3 * (k % 4))) & 7) + 1;
    out.d = f16_to_f32(iq1m_d(w));
    return out;
}

size_t block_bytes(GgmlType type) { return type_info(type).block_bytes; }

IqBlock decode(GgmlType type, const uint8_t* block) {
    switch (type) {
        case GgmlType::IQ2_XXS: return decode_iq2xxs(*reinterpret_cast<const BlockIQ2XXS*>(block));
        case GgmlType::IQ2_XS: return decode_iq2xs(*reinterpret_cast<const BlockIQ2XS*>(block));
        case GgmlType::IQ1_S: return decode_iq1s(*reinterpret_cast<const BlockIQ1S*>(block));
        case GgmlType::IQ1_M: return decode_iq1m(*reinterpret_cast<const BlockIQ1M*>(block));
        default: throw std::invalid_argument("decode: not IQ1_S, IQ1_M, IQ2_XXS or IQ2_XS");
    }
}

}  // namespace

void dequantize_iq1_iq2(GgmlType type, const void* row, int n, float* y) {
    const auto* bytes = static_cast<const uint8_t*>(row);
    const bool iq2 = type == GgmlType::IQ2_XXS || type == GgmlType::IQ2_XS;
    for (int b = 0; b < n / kQK; ++b) {
        const IqBlock block = decode(type, bytes + b * block_bytes(type));
        for (int i = 0; i < kQK; ++i) {
            const int scale = block.scale[i / 16];
            // In gguf's order of float operations: IQ2 d·(0.5 + s)·0.25 times ±grid, IQ1
            // d·(2s + 1) times grid ± 1/8 (both exact in the last step but one rounding).
            y[kQK * b + i] = iq2 ? block.d * (0.5f + static_cast<float>(scale / 2)) * 0.25f * block.q[i]
                                 : block.d * static_cast<float>(scale) * (block.q[i] * 0.125f);
        }
    }
}

float dot_iq1_iq2(GgmlType type, const void* row, const BlockQ8K* x, int n) {
    const auto* bytes = static_cast<const uint8_t*>(row);
    float sum = 0;
    for (int b = 0; b < n / kQK; ++b) {
        const IqBlock w = decode(type, bytes + b * block_bytes(type));
        int32_t scaled = 0;
        for (int g = 0; g < kQK / 16; ++g) {
            int32_t dot = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) dot += w.q[i] * x[b].qs[i];
            scaled += w.scale[g] * dot;
        }
        sum += x[b].d * w.d * 0.125f * scaled;
    }
    return sum;
}

}  // namespace numatune
