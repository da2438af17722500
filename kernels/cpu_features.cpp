#include "cpu_features.h"

#include <cstdlib>
#include <stdexcept>

#if NUMATUNE_X86_VARIANTS
#include <cpuid.h>
#endif

namespace numatune {
namespace {

#if NUMATUNE_X86_VARIANTS
unsigned long long read_xcr0() {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
    const bool osxsave = ecx & (1u << 27);
    if (!osxsave) return f;
    const unsigned long long xcr0 = read_xcr0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;          // SSE + AVX state saved by the OS
    const bool zmm_state = (xcr0 & 0xe6) == 0xe6;        // + opmask, ZMM_Hi256, Hi16_ZMM
    const bool tile_state = (xcr0 & (3ull << 17)) == (3ull << 17);
    f.fma = ymm_state && (ecx & (1u << 12));
    f.f16c = ymm_state && (ecx & (1u << 29));
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return f;
    f.avx2 = ymm_state && (ebx & (1u << 5));
    f.avx512f = zmm_state && (ebx & (1u << 16));
    f.avx512dq = f.avx512f && (ebx & (1u << 17));
    f.avx512bw = f.avx512f && (ebx & (1u << 30));
    f.avx512vl = f.avx512f && (ebx & (1u << 31));
    f.avx512vbmi = f.avx512f && (ecx & (1u << 1));
    f.avx512vnni = f.avx512f && (ecx & (1u << 11));
    f.amx_bf16 = tile_state && (edx & (1u << 22));
    f.amx_tile = tile_state && (edx & (1u << 24));
    f.amx_int8 = tile_state && (edx & (1u << 25));
    unsigned int eax1, ebx1, ecx1, edx1;
    if (__get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1)) {
        f.avx512bf16 = f.avx512f && (eax1 & (1u << 5));
    }
    return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

Isa initial_isa() {
    const char* forced = std::getenv("NUMATUNE_ISA");
    if (forced == nullptr || *forced == '\0') return best_isa();
    Isa isa = isa_from_name(forced);
    if (!isa_supported(isa)) {
        throw std::invalid_argument(std::string("NUMATUNE_ISA=") + forced +
                                    ": this CPU or build cannot run that variant");
    }
    return isa;
}

Isa& active_slot() {
    static Isa active = initial_isa();
    return active;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

bool isa_supported(Isa isa) {
    const CpuFeatures& f = cpu_features();
    switch (isa) {
        case Isa::scalar: return true;
        case Isa::avx2: return NUMATUNE_X86_VARIANTS && f.avx2 && f.fma && f.f16c;
        case Isa::avx512:
            return NUMATUNE_X86_VARIANTS && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq &&
                   f.avx512vnni && f.avx2 && f.fma && f.f16c;
    }
    return false;
}

Isa best_isa() {
    if (isa_supported(Isa::avx512)) return Isa::avx512;
    if (isa_supported(Isa::avx2)) return Isa::avx2;
    return Isa::scalar;
}

Isa active_isa() { return active_slot(); }

void set_active_isa(Isa isa) {
    if (!isa_supported(isa)) {
        throw std::invalid_argument(std::string("ISA variant ") + isa_name(isa) +
                                    " cannot run on this CPU or build");
    }
    active_slot() = isa;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
    }
    return "unknown";
}

Isa isa_from_name(const std::string& name) {
    if (name == "scalar") return Isa::scalar;
    if (name == "avx2") return Isa::avx2;
    if (name == "avx512") return Isa::avx512;
    throw std::invalid_argument("unknown ISA variant '" + name + "' (expected scalar, avx2 or avx512)");
}

}  // namespace numatune
