// The scalar truth of the row kernels (quant.h): type table, activation quantization,
// dequantization and dot products, written for clarity. Every vectorised variant must agree with
// these: exactly for quantize_activation, up to float summation order for the dot products.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "quant.h"
#include "quant_iq.h"

namespace numatune {

const std::vector<TypeInfo>& supported_types() {
    static const std::vector<TypeInfo> types = {
        {GgmlType::F32, "F32", 1, 4, ActivationFormat::f32},
        {GgmlType::F16, "F16", 1, 2, ActivationFormat::f32},
        {GgmlType::Q4_0, "Q4_0", kQ8, sizeof(BlockQ4_0), ActivationFormat::q8_0},
        {GgmlType::Q4_1, "Q4_1", kQ8, sizeof(BlockQ4_1), ActivationFormat::q8_1},
        {GgmlType::Q5_0, "Q5_0", kQ8, sizeof(BlockQ5_0), ActivationFormat::q8_0},
        {GgmlType::Q5_1, "Q5_1", kQ8, sizeof(BlockQ5_1), ActivationFormat::q8_1},
        {GgmlType::Q8_0, "Q8_0", kQ8, sizeof(BlockQ8_0), ActivationFormat::q8_0},
        {GgmlType::Q2_K, "Q2_K", kQK, sizeof(BlockQ2K), ActivationFormat::q8_k},
        {GgmlType::Q3_K, "Q3_K", kQK, sizeof(BlockQ3K), ActivationFormat::q8_k},
        {GgmlType::Q4_K, "Q4_K", kQK, sizeof(BlockQ4K), ActivationFormat::q8_k},
        {GgmlType::Q5_K, "Q5_K", kQK, sizeof(BlockQ5K), ActivationFormat::q8_k},
        {GgmlType::Q6_K, "Q6_K", kQK, sizeof(BlockQ6K), ActivationFormat::q8_k},
        {GgmlType::IQ2_XXS, "IQ2_XXS", kQK, sizeof(BlockIQ2XXS), ActivationFormat::q8_k},
        {GgmlType::IQ2_XS, "IQ2_XS", kQK, sizeof(BlockIQ2XS), ActivationFormat::q8_k},
        {GgmlType::IQ1_S, "IQ1_S", kQK, sizeof(BlockIQ1S), ActivationFormat::q8_k},
        {GgmlType::IQ3_XXS, "IQ3_XXS", kQK, sizeof(BlockIQ3XXS), ActivationFormat::q8_k},
        {GgmlType::IQ4_NL, "IQ4_NL", kQ8, sizeof(BlockIQ4NL), ActivationFormat::q8_0},
        {GgmlType::IQ3_S, "IQ3_S", kQK, sizeof(BlockIQ3S), ActivationFormat::q8_k},
        {GgmlType::IQ2_S, "IQ2_S", kQK, sizeof(BlockIQ2S), ActivationFormat::q8_k},
        {GgmlType::IQ4_XS, "IQ4_XS", kQK, sizeof(BlockIQ4XS), ActivationFormat::q8_k},
        {GgmlType::IQ1_M, "IQ1_M", kQK, sizeof(BlockIQ1M), ActivationFormat::q8_k},
        {GgmlType::BF16, "BF16", 1, 2, ActivationFormat::f32},
        {GgmlType::MXFP4, "MXFP4", kQ8, sizeof(BlockMXFP4), ActivationFormat::q8_0},
    };
    return types;
}

const TypeInfo* find_type(const std::string& name) {
    for (const TypeInfo& info : supported_types()) {
        if (name == info.name) return &info;
    }
    return nullptr;
}

const TypeInfo* find_type(uint32_t ggml_number) {
    for (const TypeInfo& info : supported_types()) {
        if (static_cast<uint32_t>(info.type) == ggml_number) return &info;
    }
    return nullptr;
}

const TypeInfo& type_info(GgmlType type) {
    const TypeInfo* info = find_type(static_cast<uint32_t>(type));
    if (info == nullptr) {
        throw std::invalid_argument("unsupported GGML type " +
                                    std::to_string(static_cast<uint32_t>(type)));
    }
    return *info;
}

void check_row_length(GgmlType type, long long n) {
    const TypeInfo& info = type_info(type);
    if (n <= 0 || n % info.block_weights != 0 || n > (1LL << 30)) {
        throw std::invalid_argument(std::string(info.name) + ": a row of " + std::to_string(n) +
                                    " weights is not a positive multiple of the block size " +
                                    std::to_string(info.block_weights));
    }
}

size_t row_bytes(GgmlType type, int n) {
    check_row_length(type, n);
    const TypeInfo& info = type_info(type);
    return static_cast<size_t>(n / info.block_weights) * info.block_bytes;
}

size_t activation_bytes(GgmlType type, int n) {
    check_row_length(type, n);
    switch (type_info(type).activation) {
        case ActivationFormat::f32: return static_cast<size_t>(n) * sizeof(float);
        case ActivationFormat::q8_0: return static_cast<size_t>(n / kQ8) * sizeof(BlockQ8_0);
        case ActivationFormat::q8_1: return static_cast<size_t>(n / kQ8) * sizeof(BlockQ8_1);
        case ActivationFormat::q8_k: return static_cast<size_t>(n / kQK) * sizeof(BlockQ8K);
    }
    return 0;
}

namespace {

int8_t round_to_int8(float v) {
    return static_cast<int8_t>(std::clamp(std::lrint(v), -127L, 127L));
}

float max_magnitude(const float* x, int n) {
    float amax = 0;
    for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    return amax;
}

void quantize_q8_k(const float* x, int n, BlockQ8K* y) {
    for (int b = 0; b < n / kQK; ++b, x += kQK) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQK));
        y[b].d = scale.d;
        for (int i = 0; i < kQK; ++i) y[b].qs[i] = round_to_int8(x[i] * scale.inverse);
        for (int g = 0; g < kQK / 16; ++g) {
            int sum = 0;
            for (int i = 0; i < 16; ++i) sum += y[b].qs[16 * g + i];
            y[b].bsums[g] = static_cast<int16_t>(sum);
        }
    }
}

void quantize_q8_0(const float* x, int n, BlockQ8_0* y) {
    for (int b = 0; b < n / kQ8; ++b, x += kQ8) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQ8));
        y[b].d = f32_to_f16(scale.d);
        for (int i = 0; i < kQ8; ++i) y[b].qs[i] = round_to_int8(x[i] * scale.inverse);
    }
}

void quantize_q8_1(const float* x, int n, BlockQ8_1* y) {
    for (int b = 0; b < n / kQ8; ++b, x += kQ8) {
        const Int8Scale scale = int8_scale(max_magnitude(x, kQ8));
        y[b].d = f32_to_f16(scale.d);
        int sum = 0;
        for (int i = 0; i < kQ8; ++i) sum += y[b].qs[i] = round_to_int8(x[i] * scale.inverse);
        y[b].sum = static_cast<int16_t>(sum);
    }
}

// ---- legacy blocks: the 32 values of a block in weight order, offset removed where the format
// has one (Q4_0: q − 8, Q5_0: q − 16), with the block's scale d and offset m (0 where none).

struct Legacy {
    int8_t q[kQ8];
    float d, m;
};

void unpack_nibbles(const uint8_t qs[kQ8 / 2], uint32_t high_bits, int offset, int8_t q[kQ8]) {
    for (int l = 0; l < kQ8 / 2; ++l) {
        q[l] = static_cast<int8_t>(((qs[l] & 0x0f) | (((high_bits >> l) & 1) << 4)) - offset);
        q[l + 16] = static_cast<int8_t>(((qs[l] >> 4) | (((high_bits >> (l + 16)) & 1) << 4)) - offset);
    }
}

uint32_t load_u32(const uint8_t bytes[4]) {
    uint32_t v;
    std::memcpy(&v, bytes, sizeof v);
    return v;
}

Legacy unpack_legacy(GgmlType type, const uint8_t* block) {
    Legacy out{};
    switch (type) {
        case GgmlType::Q4_0: {
            const auto& w = *reinterpret_cast<const BlockQ4_0*>(block);
            unpack_nibbles(w.qs, 0, 8, out.q);
            out.d = f16_to_f32(w.d);
            break;
        }
        case GgmlType::Q4_1: {
            const auto& w = *reinterpret_cast<const BlockQ4_1*>(block);
            unpack_nibbles(w.qs, 0, 0, out.q);
            out.d = f16_to_f32(w.d);
            out.m = f16_to_f32(w.m);
            break;
        }
        case GgmlType::Q5_0: {
            const auto& w = *reinterpret_cast<const BlockQ5_0*>(block);
            unpack_nibbles(w.qs, load_u32(w.qh), 16, out.q);
            out.d = f16_to_f32(w.d);
            break;
        }
        case GgmlType::Q5_1: {
            const auto& w = *reinterpret_cast<const BlockQ5_1*>(block);
            unpack_nibbles(w.qs, load_u32(w.qh), 0, out.q);
            out.d = f16_to_f32(w.d);
            out.m = f16_to_f32(w.m);
            break;
        }
        case GgmlType::IQ4_NL: {
            const auto& w = *reinterpret_cast<const BlockIQ4NL*>(block);
            unpack_nibbles(w.qs, 0, 0, out.q);
            for (int8_t& q : out.q) q = kIq4Values[q];
            out.d = f16_to_f32(w.d);
            break;
        }
        default: throw std::invalid_argument("unpack_legacy: not a legacy type");
    }
    return out;
}

// Legacy rows against Q8_0 (no offset) or Q8_1 (offset m times the block's Σ x).
template <class Activation>
float dot_legacy(GgmlType type, const uint8_t* row, const Activation* x, int blocks) {
    const size_t bytes = type_info(type).block_bytes;
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        const Legacy w = unpack_legacy(type, row + b * bytes);
        int32_t dot = 0;
        for (int i = 0; i < kQ8; ++i) dot += w.q[i] * x[b].qs[i];
        const float dx = f16_to_f32(x[b].d);
        float block = w.d * dx * dot;
        if constexpr (std::is_same_v<Activation, BlockQ8_1>) block += w.m * dx * x[b].sum;
        sum += block;
    }
    return sum;
}

// ---- K-quants other than Q4_K and Q6_K, as one form: values q (offset removed) and, per
// group of 16 weights, a scale and a minimum: w = d·scale[g]·q − dmin·min[g].

struct KQuant {
    int8_t q[kQK];
    int8_t scale[16];
    uint8_t min[16];
    float d, dmin;
};

// Weight i's two low bits in Q2_K's and Q3_K's `qs` (the same layout in both): 32 bytes per
// 128 weights, four 32-weight runs per byte column, two bits each.
static int two_bits(const uint8_t* qs, int i) {
    return (qs[32 * (i / 128) + i % 32] >> (2 * (i / 32 % 4))) & 3;
}

KQuant unpack_q2k(const BlockQ2K& w) {
    KQuant out{};
    for (int i = 0; i < kQK; ++i) out.q[i] = static_cast<int8_t>(two_bits(w.qs, i));
    for (int g = 0; g < 16; ++g) {
        out.scale[g] = static_cast<int8_t>(w.scales[g] & 0x0f);
        out.min[g] = w.scales[g] >> 4;
    }
    out.d = f16_to_f32(w.d);
    out.dmin = f16_to_f32(w.dmin);
    return out;
}

KQuant unpack_q3k(const BlockQ3K& w) {
    KQuant out{};
    for (int i = 0; i < kQK; ++i) {
        const int low = two_bits(w.qs, i);
        const int high = (w.hmask[i % 32] >> (i / 32)) & 1;
        out.q[i] = static_cast<int8_t>(low + 4 * high - 4);
    }
    uint32_t words[4];
    q3k_unpack_scales(w.scales, words);
    std::memcpy(out.scale, words, 16);
    out.d = f16_to_f32(w.d);
    return out;
}

KQuant unpack_q5k(const BlockQ5K& w) {
    KQuant out{};
    for (int i = 0; i < kQK; ++i) {
        const int low = (w.qs[32 * (i / 64) + i % 32] >> (4 * (i / 32 % 2))) & 0x0f;
        out.q[i] = static_cast<int8_t>(low | (((w.qh[i % 32] >> (i / 32)) & 1) << 4));
    }
    uint32_t words[4];
    q4k_unpack_scales(w.scales, words);
    const auto* bytes = reinterpret_cast<const uint8_t*>(words);
    for (int g = 0; g < 16; ++g) {
        out.scale[g] = static_cast<int8_t>(bytes[g / 2]);   // 6-bit scales of sub-blocks of 32
        out.min[g] = bytes[8 + g / 2];
    }
    out.d = f16_to_f32(w.d);
    out.dmin = f16_to_f32(w.dmin);
    return out;
}

KQuant unpack_iq4xs(const BlockIQ4XS& w) {
    KQuant out{};
    for (int b = 0; b < 8; ++b) {
        const int low = (w.scales_l[b / 2] >> (4 * (b % 2))) & 0x0f, high = (w.scales_h >> (2 * b)) & 3;
        out.scale[2 * b] = out.scale[2 * b + 1] = static_cast<int8_t>((low | (high << 4)) - 32);
        unpack_nibbles(w.qs + 16 * b, 0, 0, out.q + 32 * b);
    }
    for (int8_t& q : out.q) q = kIq4Values[q];
    out.d = f16_to_f32(w.d);
    return out;
}

KQuant unpack_kquant(GgmlType type, const uint8_t* block) {
    switch (type) {
        case GgmlType::Q2_K: return unpack_q2k(*reinterpret_cast<const BlockQ2K*>(block));
        case GgmlType::Q3_K: return unpack_q3k(*reinterpret_cast<const BlockQ3K*>(block));
        case GgmlType::Q5_K: return unpack_q5k(*reinterpret_cast<const BlockQ5K*>(block));
        case GgmlType::IQ4_XS: return unpack_iq4xs(*reinterpret_cast<const BlockIQ4XS*>(block));
        default: throw std::invalid_argument("unpack_kquant: not Q2_K, Q3_K, Q5_K or IQ4_XS");
    }
}

float dot_kquant(GgmlType type, const uint8_t* row, const BlockQ8K* x, int blocks) {
    const size_t bytes = type_info(type).block_bytes;
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        const KQuant w = unpack_kquant(type, row + b * bytes);
        int32_t scaled = 0, mins = 0;
        for (int g = 0; g < 16; ++g) {
            int32_t dot = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) dot += w.q[i] * x[b].qs[i];
            scaled += w.scale[g] * dot;
            mins += w.min[g] * x[b].bsums[g];
        }
        sum += x[b].d * (w.d * scaled - w.dmin * mins);
    }
    return sum;
}

// The 4-bit values of a Q4_K block in weight order, and its sub-block scales and mins.
void unpack_q4k(const BlockQ4K& block, uint8_t q[kQK], uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; ++j) {
        for (int l = 0; l < 32; ++l) {
            q[64 * j + l] = block.qs[32 * j + l] & 0x0f;
            q[64 * j + 32 + l] = block.qs[32 * j + l] >> 4;
        }
    }
    uint32_t words[4];
    q4k_unpack_scales(block.scales, words);
    std::memcpy(sc, words, 8);
    std::memcpy(m, words + 2, 8);
}

// The 6-bit values of a Q6_K block in weight order, offset removed (−32..31).
void unpack_q6k(const BlockQ6K& block, int8_t q[kQK]) {
    for (int h = 0; h < 2; ++h) {
        const uint8_t* low = block.ql + 64 * h;
        const uint8_t* high = block.qh + 32 * h;
        int8_t* out = q + 128 * h;
        for (int l = 0; l < 32; ++l) {
            out[l] = static_cast<int8_t>(((low[l] & 0x0f) | ((high[l] & 3) << 4)) - 32);
            out[l + 32] = static_cast<int8_t>(((low[l + 32] & 0x0f) | (((high[l] >> 2) & 3) << 4)) - 32);
            out[l + 64] = static_cast<int8_t>(((low[l] >> 4) | (((high[l] >> 4) & 3) << 4)) - 32);
            out[l + 96] = static_cast<int8_t>(((low[l + 32] >> 4) | (((high[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

float dot_q4_k(const BlockQ4K* w, const BlockQ8K* x, int blocks) {
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        uint8_t q[kQK], sc[8], m[8];
        unpack_q4k(w[b], q, sc, m);
        int32_t scaled = 0;   // Σ_s sc[s]·Σ q·x over sub-block s
        int32_t mins = 0;     // Σ_s m[s]·Σ x over sub-block s
        for (int s = 0; s < 8; ++s) {
            int32_t dot = 0;
            for (int i = 32 * s; i < 32 * s + 32; ++i) dot += q[i] * x[b].qs[i];
            scaled += sc[s] * dot;
            mins += m[s] * (x[b].bsums[2 * s] + x[b].bsums[2 * s + 1]);
        }
        sum += x[b].d * (f16_to_f32(w[b].d) * scaled - f16_to_f32(w[b].dmin) * mins);
    }
    return sum;
}

float dot_q6_k(const BlockQ6K* w, const BlockQ8K* x, int blocks) {
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        int8_t q[kQK];
        unpack_q6k(w[b], q);
        int32_t scaled = 0;
        for (int g = 0; g < kQK / 16; ++g) {
            int32_t dot = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) dot += q[i] * x[b].qs[i];
            scaled += w[b].scales[g] * dot;
        }
        sum += x[b].d * f16_to_f32(w[b].d) * scaled;
    }
    return sum;
}

float dot_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int blocks) {
    float sum = 0;
    for (int b = 0; b < blocks; ++b) {
        int32_t dot = 0;
        for (int i = 0; i < kQ8; ++i) dot += w[b].qs[i] * x[b].qs[i];
        sum += f16_to_f32(w[b].d) * f16_to_f32(x[b].d) * dot;
    }
    return sum;
}

template <float (*to_f32)(uint16_t)>
float dot_half(const uint16_t* w, const float* x, int n) {
    float sum = 0;
    for (int i = 0; i < n; ++i) sum += to_f32(w[i]) * x[i];
    return sum;
}

float dot_f32(const float* w, const float* x, int n) {
    float sum = 0;
    for (int i = 0; i < n; ++i) sum += w[i] * x[i];
    return sum;
}

}  // namespace

void dequantize_row(GgmlType type, const void* row, int n, float* y) {
    if (iq::handles(type)) return iq::dequantize(type, row, n, y);
    switch (type) {
        case GgmlType::F32:
            std::memcpy(y, row, static_cast<size_t>(n) * sizeof(float));
            return;
        case GgmlType::F16:
        case GgmlType::BF16: {
            const auto* w = static_cast<const uint16_t*>(row);
            for (int i = 0; i < n; ++i) y[i] = type == GgmlType::F16 ? f16_to_f32(w[i]) : bf16_to_f32(w[i]);
            return;
        }
        case GgmlType::Q8_0: {
            const auto* w = static_cast<const BlockQ8_0*>(row);
            for (int b = 0; b < n / kQ8; ++b) {
                const float d = f16_to_f32(w[b].d);
                for (int i = 0; i < kQ8; ++i) y[kQ8 * b + i] = d * w[b].qs[i];
            }
            return;
        }
        case GgmlType::Q4_K: {
            const auto* w = static_cast<const BlockQ4K*>(row);
            for (int b = 0; b < n / kQK; ++b) {
                uint8_t q[kQK], sc[8], m[8];
                unpack_q4k(w[b], q, sc, m);
                const float d = f16_to_f32(w[b].d), dmin = f16_to_f32(w[b].dmin);
                for (int i = 0; i < kQK; ++i) {
                    const float scale = d * sc[i / 32], offset = dmin * m[i / 32];
                    y[kQK * b + i] = scale * q[i] - offset;
                }
            }
            return;
        }
        case GgmlType::Q6_K: {
            const auto* w = static_cast<const BlockQ6K*>(row);
            for (int b = 0; b < n / kQK; ++b) {
                int8_t q[kQK];
                unpack_q6k(w[b], q);
                const float d = f16_to_f32(w[b].d);
                for (int i = 0; i < kQK; ++i) {
                    const float scale = d * w[b].scales[i / 16];
                    y[kQK * b + i] = scale * q[i];
                }
            }
            return;
        }
        case GgmlType::Q4_0:
        case GgmlType::Q4_1:
        case GgmlType::Q5_0:
        case GgmlType::Q5_1:
        case GgmlType::IQ4_NL: {
            const auto* w = static_cast<const uint8_t*>(row);
            const size_t bytes = type_info(type).block_bytes;
            const bool offset = type == GgmlType::Q4_1 || type == GgmlType::Q5_1;
            for (int b = 0; b < n / kQ8; ++b) {
                const Legacy block = unpack_legacy(type, w + b * bytes);
                for (int i = 0; i < kQ8; ++i) {
                    const float scaled = block.d * block.q[i];
                    y[kQ8 * b + i] = offset ? scaled + block.m : scaled;   // no + 0: −0 stays −0
                }
            }
            return;
        }
        case GgmlType::Q2_K:
        case GgmlType::Q3_K:
        case GgmlType::Q5_K:
        case GgmlType::IQ4_XS: {
            const auto* w = static_cast<const uint8_t*>(row);
            const size_t bytes = type_info(type).block_bytes;
            for (int b = 0; b < n / kQK; ++b) {
                const KQuant block = unpack_kquant(type, w + b * bytes);
                for (int i = 0; i < kQK; ++i) {
                    const float scale = block.d * block.scale[i / 16], offset = block.dmin * block.min[i / 16];
                    y[kQK * b + i] = scale * block.q[i] - offset;
                }
            }
            return;
        }
        default: break;
    }
    throw std::invalid_argument("dequantize_row: unsupported type");
}

namespace ref {

void quantize_activation(GgmlType type, const float* x, int n, void* xq) {
    switch (type_info(type).activation) {
        case ActivationFormat::f32:
            std::memcpy(xq, x, static_cast<size_t>(n) * sizeof(float));
            return;
        case ActivationFormat::q8_0: return quantize_q8_0(x, n, static_cast<BlockQ8_0*>(xq));
        case ActivationFormat::q8_1: return quantize_q8_1(x, n, static_cast<BlockQ8_1*>(xq));
        case ActivationFormat::q8_k: return quantize_q8_k(x, n, static_cast<BlockQ8K*>(xq));
    }
}

float vec_dot(GgmlType type, const void* row, const void* xq, int n) {
    if (iq::handles(type)) return iq::vec_dot(type, row, xq, n);
    switch (type) {
        case GgmlType::F32:
            return dot_f32(static_cast<const float*>(row), static_cast<const float*>(xq), n);
        case GgmlType::F16:
            return dot_half<f16_to_f32>(static_cast<const uint16_t*>(row), static_cast<const float*>(xq), n);
        case GgmlType::BF16:
            return dot_half<bf16_to_f32>(static_cast<const uint16_t*>(row), static_cast<const float*>(xq), n);
        case GgmlType::Q8_0:
            return dot_q8_0(static_cast<const BlockQ8_0*>(row), static_cast<const BlockQ8_0*>(xq), n / kQ8);
        case GgmlType::Q4_K:
            return dot_q4_k(static_cast<const BlockQ4K*>(row), static_cast<const BlockQ8K*>(xq), n / kQK);
        case GgmlType::Q6_K:
            return dot_q6_k(static_cast<const BlockQ6K*>(row), static_cast<const BlockQ8K*>(xq), n / kQK);
        case GgmlType::Q4_0:
        case GgmlType::Q5_0:
        case GgmlType::IQ4_NL:
            return dot_legacy(type, static_cast<const uint8_t*>(row), static_cast<const BlockQ8_0*>(xq), n / kQ8);
        case GgmlType::Q4_1:
        case GgmlType::Q5_1:
            return dot_legacy(type, static_cast<const uint8_t*>(row), static_cast<const BlockQ8_1*>(xq), n / kQ8);
        case GgmlType::Q2_K:
        case GgmlType::Q3_K:
        case GgmlType::Q5_K:
        case GgmlType::IQ4_XS:
            return dot_kquant(type, static_cast<const uint8_t*>(row), static_cast<const BlockQ8K*>(xq), n / kQK);
        default: break;
    }
    return 0;
}

void gemv(GgmlType type, const void* weights, size_t row_stride, int rows, const void* xq, int n,
          float* y) {
    const auto* base = static_cast<const uint8_t*>(weights);
    for (int r = 0; r < rows; ++r) y[r] = vec_dot(type, base + r * row_stride, xq, n);
}

}  // namespace ref

const QuantKernels& scalar_quant_kernels() {
    static const QuantKernels kernels{"scalar", Isa::scalar, ref::quantize_activation, ref::vec_dot,
                                      ref::gemv};
    return kernels;
}

}  // namespace numatune
