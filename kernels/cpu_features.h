// Instruction-set detection and the choice of kernel variant, made once at start-up.
#pragma once
#include <string>

namespace numatune {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512dq = false;
    bool avx512vbmi = false;
    bool avx512vnni = false;
    bool avx512bf16 = false;
    bool amx_tile = false;
    bool amx_int8 = false;
    bool amx_bf16 = false;
};

// What the CPU and the operating system (XSAVE state enabled) both support.
const CpuFeatures& cpu_features();

// Best variant this build and this CPU can run.
Isa best_isa();

// The variant in force: NUMATUNE_ISA=scalar|avx2|avx512 when set (an error if the CPU or the
// build cannot run it), otherwise best_isa(). Throws std::invalid_argument on a bad value.
Isa active_isa();

// Changes the variant in force (tests). Throws std::invalid_argument if it cannot run here.
void set_active_isa(Isa isa);

bool isa_supported(Isa isa);
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);

}  // namespace numatune
