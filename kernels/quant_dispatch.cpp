// Choice of the row-kernel variant (quant.h) from the instruction set in force.
#include <stdexcept>

#include "quant.h"

namespace numatune {

const QuantKernels& quant_kernels(Isa isa) {
    if (!isa_supported(isa)) {
        throw std::invalid_argument(std::string("ISA variant ") + isa_name(isa) +
                                    " cannot run on this CPU or build");
    }
    switch (isa) {
        case Isa::scalar: return scalar_quant_kernels();
#if NUMATUNE_X86_VARIANTS
        case Isa::avx2: return avx2_quant_kernels();
        case Isa::avx512:
            return avx512_quant_kernels(cpu_features().avx512bf16, cpu_features().avx512vbmi);
#else
        default: break;
#endif
    }
    return scalar_quant_kernels();
}

std::vector<const QuantKernels*> quant_kernel_variants() {
    std::vector<const QuantKernels*> variants{&scalar_quant_kernels()};
#if NUMATUNE_X86_VARIANTS
    if (isa_supported(Isa::avx2)) variants.push_back(&avx2_quant_kernels());
    if (isa_supported(Isa::avx512)) {
        // every combination this CPU runs, so that tests cover each code path
        for (bool bf16_dot : {false, true}) {
            for (bool vbmi : {false, true}) {
                if ((!bf16_dot || cpu_features().avx512bf16) && (!vbmi || cpu_features().avx512vbmi)) {
                    variants.push_back(&avx512_quant_kernels(bf16_dot, vbmi));
                }
            }
        }
    }
#endif
    return variants;
}

}  // namespace numatune
