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

// One feed-forward set's tensors as passed from Python: (gate, up, down, gate_type, up_type,
// down_type, intermediate), checked against the byte sizes their types and shapes need.
struct FfnArgs {
    GgmlType gate_type{}, up_type{}, down_type{};
    int intermediate = 0;
    Bytes gate, up, down;            // held until the layer is copied in
};

FfnArgs ffn_args(const py::tuple& t, size_t experts, int hidden, const char* what) {
    if (t.size() != 7) throw std::invalid_argument(std::string(what) + ": expected 7 items");
    FfnArgs a;
    a.gate_type = checked_type(t[3].cast<int>(), what);
    a.up_type = checked_type(t[4].cast<int>(), what);
    a.down_type = checked_type(t[5].cast<int>(), what);
    a.intermediate = t[6].cast<int>();
    if (a.intermediate <= 0) throw std::invalid_argument(std::string(what) + ": width must be positive");
    a.gate = t[0].cast<Bytes>();
    a.up = t[1].cast<Bytes>();
    a.down = t[2].cast<Bytes>();
    check_bytes(a.gate, experts * a.intermediate * row_bytes(a.gate_type, hidden), what);
    check_bytes(a.up, experts * a.intermediate * row_bytes(a.up_type, hidden), what);
    check_bytes(a.down, experts * hidden * row_bytes(a.down_type, a.intermediate), what);
    return a;
}

int add_layer(MoeEngine& engine, int hidden, const py::object& experts, const py::object& shared, int top_k,
              const Floats& router, const Floats& bias, const std::string& gating, bool normalize, float scale,
              int groups, int groups_used, bool weight_before, const Floats& shared_gate) {
    LayerSource s;
    s.hidden = hidden;
    s.top_k = top_k;
    FfnArgs routed, always;
    if (!experts.is_none()) {
        if (router.ndim() != 2 || router.shape(1) != hidden) throw std::invalid_argument("router must be experts × hidden");
        s.experts = static_cast<int>(router.shape(0));
        routed = ffn_args(experts.cast<py::tuple>(), static_cast<size_t>(s.experts), hidden, "experts");
        s.intermediate = routed.intermediate;
        s.gate_type = routed.gate_type;
        s.up_type = routed.up_type;
        s.down_type = routed.down_type;
        s.gate = routed.gate.data();
        s.up = routed.up.data();
        s.down = routed.down.data();
        s.router.assign(router.data(), router.data() + router.size());
        if (bias.size() != 0) {
            if (bias.size() != s.experts) throw std::invalid_argument("router bias must have one value per expert");
            s.router_bias.assign(bias.data(), bias.data() + bias.size());
        }
    }
    if (!shared.is_none()) {
        always = ffn_args(shared.cast<py::tuple>(), 1, hidden, "shared FFN");
        s.always.intermediate = always.intermediate;
        s.always.gate_type = always.gate_type;
        s.always.up_type = always.up_type;
        s.always.down_type = always.down_type;
        s.always.gate = always.gate.data();
        s.always.up = always.up.data();
        s.always.down = always.down.data();
        s.always.gate_inp.assign(shared_gate.data(), shared_gate.data() + shared_gate.size());
    }
    if (gating != "softmax" && gating != "sigmoid") throw std::invalid_argument("gating must be softmax or sigmoid");
    s.spec.gating = gating == "sigmoid" ? Gating::sigmoid : Gating::softmax;
    s.spec.normalize = normalize;
    s.spec.scale = scale;
    s.spec.groups = groups;
    s.spec.groups_used = groups_used;
    s.spec.weight_before = weight_before;
    py::gil_scoped_release release;
    return engine.add_layer(s);      // the arrays are released after the GIL is taken back
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
        .def("add_layer", &add_layer, py::arg("hidden"), py::arg("experts"), py::arg("shared"), py::arg("top_k"),
             py::arg("router"), py::arg("bias"), py::arg("gating"), py::arg("normalize"), py::arg("scale"),
             py::arg("groups"), py::arg("groups_used"), py::arg("weight_before"), py::arg("shared_gate"))
        .def("set_sync_barriers", &MoeEngine::set_sync_barriers, py::arg("per_layer"))
        .def("sync_barriers", &MoeEngine::sync_barriers)
        .def("barriers_passed", &MoeEngine::barriers_passed)
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
                 const int k = e.top_k(layer);            // 0 for a dense layer
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
