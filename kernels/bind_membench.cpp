// Python bindings of the memory bandwidth benchmark: type conversion only.
#include <pybind11/stl.h>

#include "bindings.h"
#include "membench.h"

namespace py = pybind11;

namespace numatune {

void register_membench(py::module_& m) {
    m.def(
        "membench_run",
        [](const std::string& kernel, std::vector<int> cpus, int memory_node, size_t array_bytes,
           int repeats) {
            const membench::Request request{membench::kernel_from_name(kernel), std::move(cpus),
                                            memory_node, array_bytes, repeats};
            membench::Result result;
            {
                py::gil_scoped_release release;
                result = membench::run(request);
            }
            py::dict out;
            out["gbps"] = result.gbps;
            out["pages_on_node"] = result.pages_on_node;
            out["checksum"] = result.checksum;
            out["array_bytes"] = result.array_bytes;
            out["isa"] = result.isa;
            return out;
        },
        py::arg("kernel"), py::arg("cpus"), py::arg("memory_node"), py::arg("array_bytes"),
        py::arg("repeats"),
        "Runs one bandwidth kernel ('read', 'copy', 'triad') with one thread pinned per CPU on arrays "
        "of array_bytes each, bound to memory_node (-1: first touch). Returns a dict: gbps (per "
        "repetition), pages_on_node (fraction of sampled pages per node), checksum, array_bytes, isa. "
        "ValueError for an impossible placement, RuntimeError if the results fail verification.");
}

}  // namespace numatune
