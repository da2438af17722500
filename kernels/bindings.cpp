// The numatune._kernels module: type conversion only; the logic lives in the other files.
#include "bindings.h"

#include <pybind11/stl.h>

#include "cpu_features.h"
#include "numa_syscalls.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace py = pybind11;

namespace numatune {

void register_system(py::module_& m) {
    m.def("cpu_features", [] {
        const CpuFeatures& f = cpu_features();
        py::dict d;
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512dq"] = f.avx512dq;
        d["avx512vnni"] = f.avx512vnni;
        d["avx512bf16"] = f.avx512bf16;
        d["avx512vbmi"] = f.avx512vbmi;
        d["amx_tile"] = f.amx_tile;
        d["amx_int8"] = f.amx_int8;
        d["amx_bf16"] = f.amx_bf16;
        return d;
    }, "Instruction-set features that the CPU and the OS both enable (CPUID + XCR0).");
    m.def("supported_isas", [] {
        std::vector<std::string> out;
        for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
            if (isa_supported(isa)) out.emplace_back(isa_name(isa));
        }
        return out;
    }, "Kernel variants this CPU and this build can run, slowest first.");
    m.def("active_isa", [] { return std::string(isa_name(active_isa())); },
          "Kernel variant in force (NUMATUNE_ISA or the best supported).");
    m.def("set_memory_policy", [](const std::string& mode, const std::vector<int>& nodes) {
        int value;
        if (mode == "default") value = numa::MPOL_DEFAULT;
        else if (mode == "bind") value = numa::MPOL_BIND;
        else if (mode == "interleave") value = numa::MPOL_INTERLEAVE;
        else if (mode == "preferred") value = numa::MPOL_PREFERRED;
        else throw std::invalid_argument("unknown memory policy '" + mode + "'");
        if (value != numa::MPOL_DEFAULT && nodes.empty()) {
            throw std::invalid_argument("memory policy '" + mode + "' needs at least one node");
        }
        numa::NodeMask mask(nodes);
        if (numa::set_mempolicy(value, value == numa::MPOL_DEFAULT ? nullptr : &mask) != 0) {
            throw std::invalid_argument("set_mempolicy(" + mode + "): " + std::strerror(errno));
        }
    }, py::arg("mode"), py::arg("nodes"),
    "Memory policy of the calling thread (inherited by children and kept across exec), as "
    "numactl --membind/--interleave/--preferred sets it.");
    m.def("set_active_isa", [](const std::string& name) { set_active_isa(isa_from_name(name)); },
          py::arg("name"), "Force a kernel variant; ValueError if it cannot run here.");
}

}  // namespace numatune

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "numatune's C++ core: memory benchmark and MoE expert engine";
    numatune::register_system(m);
    numatune::register_membench(m);
    numatune::register_quant(m);
    numatune::register_engine(m);
}
