// Python bindings of the MoE engine: type conversion and GIL release only.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "bindings.h"
#include "engine.h"

namespace py = pybind11;

namespace numatune {
namespace {

using Bytes = py::array_t<uint8_t, py::array::c_style>;
using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Ints = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

GgmlType checked_type(int number, const char* what) {
    if (number < 0 || find_type(static_cast<uint32_t>(number)) == nullptr) {
        throw std::invalid_argument(std::string(what) + ": GGML type " + std::to_string(number) +
                                    " is not supported by the engine");
    }
    return static_cast<GgmlType>(number);
}

void check_bytes(const Bytes& a, size_t expected, const char* what) {
    if (static_cast<size_t>(a.size()) != expected) {
        throw std::invalid_argument(std::string(what) + ": " + std::to_string(a.size()) + " bytes, expected " +
                                    std::to_string(expected));
    }
}

int add_layer(MoeEngine& engine, const Bytes& gate, const Bytes& up, const Bytes& down, int gate_type,
              int up_type, int down_type, int hidden, int intermediate, int top_k, const Floats& router,
              const Floats& bias, const std::string& gating, bool normalize, float scale) {
    LayerSource s;
    s.hidden = hidden;
    s.intermediate = intermediate;
    s.top_k = top_k;
    s.gate_type = checked_type(gate_type, "gate");
    s.up_type = checked_type(up_type, "up");
    s.down_type = checked_type(down_type, "down");
    if (router.ndim() != 2 || router.shape(1) != hidden) throw std::invalid_argument("router must be experts × hidden");
    s.experts = static_cast<int>(router.shape(0));
    const size_t e = static_cast<size_t>(s.experts);
    check_bytes(gate, e * intermediate * row_bytes(s.gate_type, hidden), "gate experts");
    check_bytes(up, e * intermediate * row_bytes(s.up_type, hidden), "up experts");
    check_bytes(down, e * hidden * row_bytes(s.down_type, intermediate), "down experts");
    s.gate = gate.data();
    s.up = up.data();
    s.down = down.data();
    s.router.assign(router.data(), router.data() + router.size());
    if (bias.size() != 0) {
        if (bias.size() != s.experts) throw std::invalid_argument("router bias must have one value per expert");
        s.router_bias.assign(bias.data(), bias.data() + bias.size());
    }
    if (gating != "softmax" && gating != "sigmoid") throw std::invalid_argument("gating must be softmax or sigmoid");
    s.spec.gating = gating == "sigmoid" ? Gating::sigmoid : Gating::softmax;
    s.spec.normalize = normalize;
    s.spec.scale = scale;
    py::gil_scoped_release release;
    return engine.add_layer(s);
}

}  // namespace

void register_engine(py::module_& m) {
    py::enum_<Placement>(m, "Placement", "Memory placement of the weights (numatune.policy.Policy by number).")
        .value("first_touch", Placement::first_touch)
        .value("interleave", Placement::interleave)
        .value("bind", Placement::bind)
        .value("replicate", Placement::replicate)
        .value("partition", Placement::partition);
    py::class_<MoeEngine>(m, "MoeEngine")
        .def(py::init([](const std::vector<int>& cpus, const std::vector<int>& cpu_nodes, Placement placement,
                         const std::vector<int>& nodes) { return new MoeEngine(cpus, cpu_nodes, placement, nodes); }),
             py::arg("cpus"), py::arg("cpu_nodes"), py::arg("placement"), py::arg("nodes"))
        .def("add_layer", &add_layer)
        .def("experts_forward",
             [](MoeEngine& e, int layer, const Floats& x, const Ints& ids, const Floats& weights) {
                 if (layer < 0 || layer >= e.layers()) throw std::invalid_argument("layer out of range");
                 if (x.size() != e.hidden(layer)) throw std::invalid_argument("x has the wrong width");
                 if (ids.size() != weights.size()) throw std::invalid_argument("ids and weights differ in length");
                 Floats y(e.hidden(layer));
                 float* out = y.mutable_data();
                 {
                     py::gil_scoped_release release;
                     e.experts_forward(layer, x.data(), ids.data(), weights.data(), static_cast<int>(ids.size()), out);
                 }
                 return y;
             })
        .def("moe_forward",
             [](MoeEngine& e, int layer, const Floats& x) {
                 if (layer < 0 || layer >= e.layers()) throw std::invalid_argument("layer out of range");
                 if (x.size() != e.hidden(layer)) throw std::invalid_argument("x has the wrong width");
                 const int k = e.top_k(layer);
                 Floats y(e.hidden(layer));
                 Ints ids(k);
                 Floats w(k);
                 float* out = y.mutable_data();
                 int* id_out = ids.mutable_data();
                 float* w_out = w.mutable_data();
                 {
                     py::gil_scoped_release release;
                     e.moe_forward(layer, x.data(), out, id_out, w_out);
                 }
                 return py::make_tuple(y, ids, w);
             })
        .def("decode_bench",
             [](MoeEngine& e, int tokens, int warmup, uint64_t seed) {
                 DecodeStats s;
                 {
                     py::gil_scoped_release release;
                     s = e.decode_bench(tokens, warmup, seed);
                 }
                 py::dict d;
                 d["tokens"] = s.tokens;
                 d["seconds"] = s.seconds;
                 d["bytes_per_token"] = s.bytes_per_token;
                 return d;
             })
        .def("placement", &MoeEngine::placement, py::arg("samples_per_group"))
        .def("worker_cpus", &MoeEngine::worker_cpus)
        .def("resident_bytes", &MoeEngine::resident_bytes);
}

}  // namespace numatune
