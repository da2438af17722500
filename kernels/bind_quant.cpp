// Python bindings of the row kernels (quant.h), for tests and benchmarks: type conversion and
// argument checks only.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <climits>
#include <optional>

#include "bindings.h"
#include "quant.h"

namespace py = pybind11;

namespace numatune {
namespace {

const TypeInfo& type_named(const std::string& name) {
    const TypeInfo* info = find_type(name);
    if (info == nullptr) {
        std::string known;
        for (const TypeInfo& t : supported_types()) known += (known.empty() ? "" : ", ") + std::string(t.name);
        throw py::value_error("unknown weight type '" + name + "' (expected one of " + known + ")");
    }
    return *info;
}

// An ISA name ("avx512": the variant the engine would use) or a variant name ("avx512-vnni").
const QuantKernels& kernels_named(const std::optional<std::string>& isa) {
    if (!isa) return quant_kernels();
    for (const QuantKernels* variant : quant_kernel_variants()) {
        if (*isa == variant->name) return *variant;
    }
    return quant_kernels(isa_from_name(*isa));
}

// The weights of a GGML row of the given byte length; ValueError unless whole blocks.
int weights_in_bytes(const TypeInfo& info, py::ssize_t bytes) {
    if (bytes <= 0 || bytes % info.block_bytes != 0 ||
        bytes / info.block_bytes > INT_MAX / info.block_weights) {
        throw py::value_error(std::string(info.name) + ": " + std::to_string(bytes) +
                              " bytes are not a positive whole number of " +
                              std::to_string(info.block_bytes) + "-byte blocks");
    }
    return static_cast<int>(bytes / info.block_bytes * info.block_weights);
}

using FloatVector = py::array_t<float, py::array::c_style | py::array::forcecast>;

void check_vector(const TypeInfo& info, const FloatVector& x) {
    if (x.ndim() != 1) {
        throw py::value_error(std::string(info.name) + ": x must be 1-D, got " + std::to_string(x.ndim()) + " dimensions");
    }
    check_row_length(info.type, x.shape(0));
}

std::vector<float> quantized(const QuantKernels& kernels, const TypeInfo& info, const float* x, int n) {
    // float elements: 4-byte aligned, as the kernels assume of xq
    std::vector<float> xq((activation_bytes(info.type, n) + sizeof(float) - 1) / sizeof(float));
    kernels.quantize_activation(info.type, x, n, xq.data());
    return xq;
}

py::array_t<float> gemv_checked(const std::string& type_name, const py::array& weights, const FloatVector& x,
                        const std::optional<std::string>& isa) {
    const TypeInfo& info = type_named(type_name);
    const QuantKernels& kernels = kernels_named(isa);
    check_vector(info, x);
    const std::string name = info.name;
    if (!weights.dtype().is(py::dtype::of<uint8_t>()) || weights.ndim() != 2) {
        throw py::value_error(name + ": weights must be a 2-D uint8 array (rows × row bytes)");
    }
    if (weights.shape(1) > 1 && weights.strides(1) != 1) {
        throw py::value_error(name + ": the bytes of each weight row must be contiguous");
    }
    const int n = weights_in_bytes(info, weights.shape(1));
    if (n != x.shape(0)) {
        throw py::value_error(name + ": rows of " + std::to_string(weights.shape(1)) + " bytes hold " +
                              std::to_string(n) + " weights but x has " + std::to_string(x.shape(0)));
    }
    if (weights.shape(0) > INT_MAX) throw py::value_error(name + ": too many rows");
    const size_t alignment = info.type == GgmlType::F32 ? 4 : info.type == GgmlType::MXFP4 ? 1 : 2;   // MXFP4: bytes only
    const auto base = reinterpret_cast<uintptr_t>(weights.data());
    if (base % alignment != 0 || static_cast<size_t>(weights.strides(0)) % alignment != 0) {
        throw py::value_error(name + ": weight rows must start at " + std::to_string(alignment) +
                              "-byte aligned addresses");
    }
    const int rows = static_cast<int>(weights.shape(0));
    py::array_t<float> y(rows);
    float* out = y.mutable_data();
    {
        py::gil_scoped_release release;
        const std::vector<float> xq = quantized(kernels, info, x.data(), n);
        kernels.gemv(info.type, weights.data(), static_cast<size_t>(weights.strides(0)), rows, xq.data(), n, out);
    }
    return y;
}

py::array_t<uint8_t> quantize_activation_checked(const std::string& type_name, const FloatVector& x,
                                         const std::optional<std::string>& isa) {
    const TypeInfo& info = type_named(type_name);
    const QuantKernels& kernels = kernels_named(isa);
    check_vector(info, x);
    const int n = static_cast<int>(x.shape(0));
    const std::vector<float> xq = quantized(kernels, info, x.data(), n);
    const size_t bytes = activation_bytes(info.type, n);
    py::array_t<uint8_t> out(static_cast<py::ssize_t>(bytes));
    std::memcpy(out.mutable_data(), xq.data(), bytes);
    return out;
}

py::array_t<float> dequantize_checked(const std::string& type_name, const py::buffer& data) {
    const TypeInfo& info = type_named(type_name);
    const py::buffer_info buffer = data.request();
    py::ssize_t expected_stride = buffer.itemsize;
    for (py::ssize_t axis = buffer.ndim - 1; axis >= 0; --axis) {
        if (buffer.shape[axis] > 1 && buffer.strides[axis] != expected_stride) {
            throw py::value_error(std::string(info.name) + ": the bytes must be contiguous");
        }
        expected_stride *= buffer.shape[axis];
    }
    const int n = weights_in_bytes(info, buffer.size * buffer.itemsize);
    std::vector<uint32_t> aligned((buffer.size * buffer.itemsize + 3) / 4);
    std::memcpy(aligned.data(), buffer.ptr, buffer.size * buffer.itemsize);
    py::array_t<float> y(n);
    dequantize_row(info.type, aligned.data(), n, y.mutable_data());
    return y;
}

}  // namespace

void register_quant(py::module_& m) {
    m.def("quant_variants", [] {
        std::vector<std::string> names;
        for (const QuantKernels* variant : quant_kernel_variants()) names.emplace_back(variant->name);
        return names;
    }, "Row-kernel variants this CPU and build can run, slowest first ('scalar', 'avx2', "
       "'avx512-vnni', 'avx512-vnni-vbmi', 'avx512-vnni-bf16', 'avx512-vnni-bf16-vbmi').");
    m.def("supported_types", [] {
        std::vector<std::string> names;
        for (const TypeInfo& t : supported_types()) names.emplace_back(t.name);
        return names;
    }, "GGUF type names the row kernels compute with, in GGML number order.");
    m.def("gemv", &gemv_checked, py::arg("type_name"), py::arg("weights"), py::arg("x"), py::arg("isa") = py::none(),
          "y = W·x for W a 2-D uint8 array of GGUF rows of type_name (a GGUF type name of "
          "supported_types()): quantizes x as the engine does, then runs the row kernels of `isa` (an ISA "
          "name, a name from quant_variants(), or None for the variant in force). Releases the GIL. "
          "ValueError for a bad type, shape, alignment or variant.");
    m.def("quantize_activation", &quantize_activation_checked, py::arg("type_name"), py::arg("x"),
          py::arg("isa") = py::none(),
          "The bytes x becomes before it is dotted with rows of type_name (Q8_K blocks for the K-quants, "
          "Q8_0 blocks for Q4_0/Q5_0/Q8_0, Q8_1 blocks for Q4_1/Q5_1, float32 for float types). Every variant gives the same bytes.");
    m.def("dequantize_row", &dequantize_checked, py::arg("type_name"), py::arg("data"),
          "The float32 weights held by contiguous GGUF blocks of type_name (the scalar reference).");
}

}  // namespace numatune
