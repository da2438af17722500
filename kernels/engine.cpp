#include "engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>

#include "cpu_features.h"

namespace numatune {
namespace {

// Splits [0, count) into `parts` contiguous ranges; returns range `index`.
inline std::pair<int, int> share(int count, int parts, int index) {
    const long begin = static_cast<long>(count) * index / parts;
    const long end = static_cast<long>(count) * (index + 1) / parts;
    return {static_cast<int>(begin), static_cast<int>(end)};
}

// e^x for the SiLU, in a form the compiler vectorises (no call, no branch): x = n·ln2 + r with
// |r| ≤ ln2/2, e^r by a degree-6 polynomial (the Cephes expf coefficients), 2^n in the exponent
// bits. Relative error about 2e-7 over the clamped range, like libm's expf for our purpose.
// n is rounded by adding and subtracting 1.5·2^23 (exact for |n| < 2^22, ties to even like
// nearbyint): std::nearbyint is a call the vectoriser will not take, and the loop ran scalar
// (about 3 % of a Q4_K_M decode at one thread).
inline float exp_approx(float x) {
    x = std::min(88.0f, std::max(-87.0f, x));
    constexpr float kRound = 12582912.0f;
    const float n = (x * 1.44269504088896341f + kRound) - kRound;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

inline float silu(float v) { return v / (1.0f + exp_approx(-v)); }

// Rows of h quantized together for the down projection: one block of its activation format
// (256 for Q4_K/Q6_K, whose activation is Q8_K; 32 for Q8_0). A partition slices the experts'
// width at these boundaries, so that every node's columns of down are whole blocks.
int block_rows(GgmlType down_type) {
    const TypeInfo& info = type_info(down_type);
    return info.activation == ActivationFormat::f32 ? 32 : info.block_weights;
}

// Rows of gate/up in one unit of work: a whole block of h where that gives every worker several
// units, else halved down to kMinWorkRows. DeepSeek-V3 experts (width 2048) in 256-row units
// give 8 × 8 = 64 units per token and layer, which would leave half of 128 threads idle for two
// thirds of the bytes. Units are not made small by default: each gemv call has a fixed cost, and
// 32-row units measured 4-5 % slower on two threads (Q4_K_M, where 256-row units give 12 each).
// Each block of h is quantized by the unit that completes it (a countdown per block).
constexpr int kMinWorkRows = 32;
constexpr int kUnitsPerWorker = 4;

int work_rows(int block_rows, int experts, int slice_rows, int workers) {
    int rows = block_rows;
    while (rows > kMinWorkRows && experts * ((slice_rows + rows - 1) / rows) < kUnitsPerWorker * workers) rows /= 2;
    return rows;
}

// Byte offset of weight `first` within a row, or within its activation (0 for the first).
size_t row_offset(GgmlType type, int first) { return first == 0 ? 0 : row_bytes(type, first); }
size_t activation_offset(GgmlType type, int first) { return first == 0 ? 0 : activation_bytes(type, first); }

}  // namespace

// One copy (replicate), one node's share (partition) or the only copy of a set of experts.
struct MoeEngine::Slice {
    int group = 0;                    // index into nodes_ (which workers read it)
    int row_begin = 0, row_end = 0;   // rows of gate/up (= columns of down) held here
    std::unique_ptr<Region> gate, up, down;
    size_t gate_expert_bytes = 0, up_expert_bytes = 0, down_expert_bytes = 0;
    size_t down_row_bytes = 0;        // bytes of one down row restricted to [row_begin, row_end)
};

// Experts of one shape and type, placed: a layer's routed experts, or its one always-computed
// FFN (shared expert or dense FFN), which is placed and split over the workers the same way.
struct MoeEngine::Experts {
    int count = 0, hidden = 0, intermediate = 0;
    GgmlType gate_type{}, up_type{}, down_type{};
    size_t gate_row_bytes = 0, up_row_bytes = 0, down_row_bytes = 0;
    int block_rows = 32;              // rows of h per activation block of down (slices align to it)
    int blocks = 0;                   // activation blocks per expert: ceil(intermediate / block_rows)
    std::vector<Slice> slices;
    size_t expert_bytes = 0;          // gate + up + down of one expert
};

struct MoeEngine::Layer {
    LayerSource source;               // shapes, types, router (the weight pointers are not kept)
    Experts routed;                   // count == 0: a dense layer
    Experts always;                   // count == 0: no shared expert
    size_t router_bytes = 0;
    size_t always_gate_bytes = 0;     // qwen2moe's shared-expert gate
};

struct MoeEngine::Scratch {
    std::vector<float> logits, x, xnext, xs;
    std::vector<uint8_t> x_gate_q, x_up_q;
    std::vector<float> h;             // top_k × intermediate
    std::vector<uint8_t> h_q;         // top_k × activation bytes of intermediate
    std::vector<float> partial;       // groups × hidden (partition)
    std::vector<float> down_out;      // workers × hidden: each worker's rows of one expert's down
    size_t down_out_stride = 0;
    std::vector<int> ids;
    std::vector<float> weights;
    std::vector<float> group_scores;
    std::vector<char> eligible;
    size_t h_q_stride = 0;
    // Per (expert j, block of h): units of gate/up still to finish that block.
    std::unique_ptr<std::atomic<int>[]> pending;
    size_t pending_size = 0;
};

MoeEngine::MoeEngine(const std::vector<int>& cpus, const std::vector<int>& cpu_nodes, Placement placement,
                     const std::vector<int>& nodes)
    : cpus_(cpus), cpu_nodes_(cpu_nodes), nodes_(nodes), placement_(placement), scratch_(new Scratch) {
    if (cpus.empty()) throw std::invalid_argument("the engine needs at least one CPU");
    if (cpus.size() != cpu_nodes.size()) throw std::invalid_argument("one node per CPU is needed");
    const bool grouped = placement == Placement::replicate || placement == Placement::partition;
    if (!grouped) nodes_ = placement == Placement::first_touch ? std::vector<int>{} : nodes;
    if ((placement == Placement::bind || placement == Placement::interleave || grouped) && nodes_.empty()) {
        throw std::invalid_argument("this placement needs a node set");
    }
    if (placement == Placement::bind && nodes_.size() != 1) {
        throw std::invalid_argument("bind places memory on exactly one node");
    }
    const size_t groups = grouped ? nodes_.size() : 1;
    group_workers_.assign(groups, {});
    group_of_worker_.assign(cpus.size(), 0);
    for (size_t w = 0; w < cpus.size(); ++w) {
        int group = 0;
        if (grouped) {
            auto it = std::find(nodes_.begin(), nodes_.end(), cpu_nodes[w]);
            if (it == nodes_.end()) {
                throw std::invalid_argument("CPU " + std::to_string(cpus[w]) + " is on node " +
                                            std::to_string(cpu_nodes[w]) + ", outside the placement's nodes");
            }
            group = static_cast<int>(it - nodes_.begin());
        }
        group_of_worker_[w] = group;
        group_workers_[group].push_back(static_cast<int>(w));
    }
    for (size_t g = 0; g < groups; ++g) {
        if (group_workers_[g].empty()) {
            throw std::invalid_argument("node " + std::to_string(nodes_[g]) +
                                        " gets a copy or slice of the weights but none of the CPUs");
        }
    }
    pool_.reset(new ThreadPool(cpus));
}

MoeEngine::~MoeEngine() = default;

int MoeEngine::hidden(int layer) const { return layers_.at(layer)->source.hidden; }

int MoeEngine::top_k(int layer) const { return layers_.at(layer)->source.top_k; }

int MoeEngine::add_layer(const LayerSource& src) {
    const bool dense = src.experts == 0;
    if (src.experts < 0 || src.hidden <= 0 || (!dense && (src.intermediate <= 0 || src.top_k <= 0 || src.top_k > src.experts))) {
        throw std::invalid_argument("layer shape is invalid (experts, widths or top-k)");
    }
    if (dense && (src.always.intermediate <= 0 || src.top_k != 0)) {
        throw std::invalid_argument("a dense layer needs its FFN and no top-k");
    }
    if (!dense && src.router.size() != static_cast<size_t>(src.experts) * src.hidden) {
        throw std::invalid_argument("router must be experts × hidden float32 values");
    }
    const RouterSpec& spec = src.spec;
    if (!dense && (spec.groups < 1 || src.experts % spec.groups != 0 || spec.groups_used < 1 ||
                   spec.groups_used > spec.groups || spec.groups_used * (src.experts / spec.groups) < src.top_k)) {
        throw std::invalid_argument("expert groups must divide the experts and leave at least top-k eligible");
    }
    if (spec.weight_before && src.top_k != 1) throw std::invalid_argument("weighting the input needs top-1 routing");
    if (!src.always.gate_inp.empty() && src.always.gate_inp.size() != static_cast<size_t>(src.hidden)) {
        throw std::invalid_argument("the shared expert's gate must have hidden values");
    }
    auto layer = std::make_unique<Layer>();
    Layer& L = *layer;
    L.source = src;
    L.source.gate = L.source.up = L.source.down = nullptr;
    L.source.always.gate = L.source.always.up = L.source.always.down = nullptr;
    L.router_bytes = (src.router.size() + src.router_bias.size()) * sizeof(float);
    L.always_gate_bytes = src.always.gate_inp.size() * sizeof(float);
    if (!dense) {
        L.routed = Experts{src.experts, src.hidden, src.intermediate, src.gate_type, src.up_type, src.down_type};
        place(L.routed, src.gate, src.up, src.down);
        size_scratch(L.routed, src.experts);       // experts_forward may ask for up to all
    }
    if (src.always.intermediate > 0) {
        const FfnSource& a = src.always;
        L.always = Experts{1, src.hidden, a.intermediate, a.gate_type, a.up_type, a.down_type};
        place(L.always, a.gate, a.up, a.down);
        size_scratch(L.always, 1);
    }
    Scratch& S = *scratch_;
    S.logits.resize(std::max<size_t>(S.logits.size(), src.experts));
    S.group_scores.resize(std::max<size_t>(S.group_scores.size(), spec.groups));
    S.eligible.resize(std::max<size_t>(S.eligible.size(), src.experts));
    S.ids.resize(std::max<size_t>(S.ids.size(), std::max(1, src.top_k)));
    S.weights.resize(std::max<size_t>(S.weights.size(), std::max(1, src.top_k)));
    layers_.push_back(std::move(layer));
    return static_cast<int>(layers_.size()) - 1;
}

void MoeEngine::place(Experts& E, const uint8_t* gate, const uint8_t* up, const uint8_t* down) {
    E.gate_row_bytes = row_bytes(E.gate_type, E.hidden);
    E.up_row_bytes = row_bytes(E.up_type, E.hidden);
    E.down_row_bytes = row_bytes(E.down_type, E.intermediate);
    E.block_rows = block_rows(E.down_type);
    E.expert_bytes = (E.gate_row_bytes + E.up_row_bytes) * E.intermediate + E.down_row_bytes * E.hidden;
    E.blocks = (E.intermediate + E.block_rows - 1) / E.block_rows;

    const size_t groups = group_workers_.size();
    const bool partition = placement_ == Placement::partition;
    if (partition && E.blocks < static_cast<int>(groups)) {
        throw std::invalid_argument("expert width " + std::to_string(E.intermediate) +
                                    " is too narrow to partition over " + std::to_string(groups) + " nodes");
    }
    const size_t copies = placement_ == Placement::replicate || partition ? groups : 1;
    for (size_t g = 0; g < copies; ++g) {
        Slice s;
        s.group = static_cast<int>(g);
        if (partition) {
            auto [u0, u1] = share(E.blocks, static_cast<int>(groups), static_cast<int>(g));
            s.row_begin = u0 * E.block_rows;
            s.row_end = std::min(u1 * E.block_rows, E.intermediate);
        } else {
            s.row_begin = 0;
            s.row_end = E.intermediate;
        }
        const int rows = s.row_end - s.row_begin;
        s.gate_expert_bytes = E.gate_row_bytes * rows;
        s.up_expert_bytes = E.up_row_bytes * rows;
        s.down_row_bytes = row_bytes(E.down_type, rows);
        s.down_expert_bytes = s.down_row_bytes * E.hidden;
        MemPolicy policy = MemPolicy::inherit;
        std::vector<int> where;
        if (placement_ == Placement::bind || placement_ == Placement::replicate || partition) {
            policy = MemPolicy::bind;
            where = {nodes_[placement_ == Placement::bind ? 0 : g]};
        } else if (placement_ == Placement::interleave) {
            policy = MemPolicy::interleave;
            where = nodes_;
        }
        s.gate.reset(new Region(s.gate_expert_bytes * E.count, policy, where));
        s.up.reset(new Region(s.up_expert_bytes * E.count, policy, where));
        s.down.reset(new Region(s.down_expert_bytes * E.count, policy, where));
        E.slices.push_back(std::move(s));
    }

    // Copy in parallel: each slice by the workers that will read it, so that under first-touch
    // the pages land on the readers' nodes and a bound placement is filled at full bandwidth.
    auto copy_job = [&](int worker) {
        for (Slice& s : E.slices) {
            const bool mine = copies == 1 || s.group == group_of_worker_[worker];
            if (!mine) continue;
            const auto& members = copies == 1 ? std::vector<int>() : group_workers_[s.group];
            const int parts = copies == 1 ? pool_->size() : static_cast<int>(members.size());
            const int index = copies == 1 ? worker
                : static_cast<int>(std::find(members.begin(), members.end(), worker) - members.begin());
            auto [e0, e1] = share(E.count * 2, parts, index);  // gate+up rows, by expert half
            for (int item = e0; item < e1; ++item) {
                const int e = item / 2;
                const bool is_gate = item % 2 == 0;
                const uint8_t* from = (is_gate ? gate : up) +
                    (static_cast<size_t>(e) * E.intermediate + s.row_begin) *
                    (is_gate ? E.gate_row_bytes : E.up_row_bytes);
                uint8_t* to = (is_gate ? s.gate : s.up)->data() +
                    e * (is_gate ? s.gate_expert_bytes : s.up_expert_bytes);
                std::memcpy(to, from, is_gate ? s.gate_expert_bytes : s.up_expert_bytes);
            }
            // down: every row's columns [row_begin, row_end), i.e. whole blocks of that row.
            const size_t col_offset = row_offset(E.down_type, s.row_begin);
            auto [r0, r1] = share(E.count * E.hidden, parts, index);
            for (int item = r0; item < r1; ++item) {
                const uint8_t* from = down + static_cast<size_t>(item) * E.down_row_bytes + col_offset;
                std::memcpy(s.down->data() + static_cast<size_t>(item) * s.down_row_bytes, from, s.down_row_bytes);
            }
        }
    };
    ThreadPool::CallerScope scope(*pool_);
    pool_->run(copy_job);
}

void MoeEngine::size_scratch(const Experts& E, int max_k) {
    Scratch& S = *scratch_;
    const size_t groups = group_workers_.size();
    S.x.resize(std::max<size_t>(S.x.size(), E.hidden));
    S.xs.resize(std::max<size_t>(S.xs.size(), E.hidden));
    S.xnext.resize(std::max<size_t>(S.xnext.size(), E.hidden));
    S.x_gate_q.resize(std::max(S.x_gate_q.size(), activation_bytes(E.gate_type, E.hidden)));
    S.x_up_q.resize(std::max(S.x_up_q.size(), activation_bytes(E.up_type, E.hidden)));
    const size_t k = static_cast<size_t>(max_k);
    S.h.resize(std::max(S.h.size(), k * E.intermediate));
    S.h_q_stride = std::max(S.h_q_stride, activation_bytes(E.down_type, E.intermediate));
    S.h_q.resize(std::max(S.h_q.size(), k * S.h_q_stride));
    S.partial.resize(std::max(S.partial.size(), groups * E.hidden));
    S.down_out_stride = std::max<size_t>(S.down_out_stride, E.hidden);
    S.down_out.resize(S.down_out_stride * pool_->size());
    const size_t pending = k * E.blocks;
    if (pending > S.pending_size) {
        S.pending.reset(new std::atomic<int>[pending]);
        S.pending_size = pending;
    }
}

void MoeEngine::experts_forward(int layer, const float* x, const int* ids, const float* weights, int k, float* y) {
    Layer& L = *layers_.at(layer);
    if (k <= 0 || k > L.routed.count) throw std::invalid_argument("number of experts out of range");
    for (int j = 0; j < k; ++j) {
        if (ids[j] < 0 || ids[j] >= L.routed.count) {
            throw std::invalid_argument("expert id " + std::to_string(ids[j]) + " out of range");
        }
    }
    ThreadPool::CallerScope scope(*pool_);
    run_experts(L.routed, x, ids, weights, k, y, false, 0);
}

void MoeEngine::moe_forward(int layer, const float* x, float* y, int* chosen_ids, float* chosen_weights) {
    Layer& L = *layers_.at(layer);
    ThreadPool::CallerScope scope(*pool_);
    forward(L, x, y, chosen_ids, chosen_weights);
}

void MoeEngine::set_sync_barriers(int per_layer) {
    if (per_layer < 0) throw std::invalid_argument("barriers per layer must be 0 or more");
    sync_barriers_ = per_layer;
}

void MoeEngine::forward(Layer& L, const float* x, float* y, int* ids, float* weights) {
    const LayerSource& s = L.source;
    bool written = false;
    if (L.routed.count > 0) {
        route(L, x, ids, weights);
        if (s.spec.weight_before) {
            // Llama 4 scales the expert's input, not its output (top-1: one scaled copy of x).
            float* xs = scratch_->xs.data();
            for (int i = 0; i < s.hidden; ++i) xs[i] = x[i] * weights[0];
            const float one = 1.0f;
            run_experts(L.routed, xs, ids, &one, 1, y, false, sync_barriers_);
        } else {
            run_experts(L.routed, x, ids, weights, s.top_k, y, false, sync_barriers_);
        }
        written = true;
    }
    if (L.always.count > 0) {
        float gate = 1.0f;
        if (!s.always.gate_inp.empty()) {
            double dot = 0;
            for (int i = 0; i < s.hidden; ++i) dot += double(s.always.gate_inp[i]) * x[i];
            gate = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
        }
        const int zero = 0;
        run_experts(L.always, x, &zero, &gate, 1, y, written, written ? 0 : sync_barriers_);
    }
}

void MoeEngine::route(const Layer& L, const float* x, int* ids, float* weights) {
    const LayerSource& s = L.source;
    Scratch& S = *scratch_;
    float* logits = S.logits.data();
    const QuantKernels& q = quant_kernels();
    auto router_job = [&](int worker) {
        auto [e0, e1] = share(s.experts, pool_->size(), worker);
        if (e1 > e0) {
            q.gemv(GgmlType::F32, reinterpret_cast<const uint8_t*>(s.router.data() + static_cast<size_t>(e0) * s.hidden),
                   s.hidden * sizeof(float), e1 - e0, x, s.hidden, logits + e0);
        }
    };
    pool_->run(router_job);
    // Gating probabilities (selection may add a bias that does not enter the weights).
    if (s.spec.gating == Gating::sigmoid) {
        for (int e = 0; e < s.experts; ++e) logits[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    } else {
        const float top = *std::max_element(logits, logits + s.experts);
        float sum = 0;
        for (int e = 0; e < s.experts; ++e) sum += (logits[e] = std::exp(logits[e] - top));
        for (int e = 0; e < s.experts; ++e) logits[e] /= sum;
    }
    const bool biased = !s.router_bias.empty();
    auto key = [&](int e) { return logits[e] + (biased ? s.router_bias[e] : 0.0f); };
    // Group-limited selection (DeepSeek's Gate): a group's score is the sum of its two highest
    // selection scores when there is a selection bias (V3/R1), its highest otherwise (V2); the
    // best groups_used groups stay eligible. Ties go to the lower group, as below to the lower id.
    char* eligible = S.eligible.data();
    std::fill(eligible, eligible + s.experts, 1);
    if (s.spec.groups > 1) {
        const int per_group = s.experts / s.spec.groups;
        float* score = S.group_scores.data();
        for (int g = 0; g < s.spec.groups; ++g) {
            float first = -INFINITY, second = -INFINITY;
            for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
                const float v = key(e);
                if (v > first) {
                    second = first;
                    first = v;
                } else if (v > second) {
                    second = v;
                }
            }
            score[g] = biased && per_group > 1 ? first + second : first;
        }
        for (int g = 0; g < s.spec.groups; ++g) {
            int better = 0;             // groups ranked before g
            for (int o = 0; o < s.spec.groups; ++o) better += score[o] > score[g] || (score[o] == score[g] && o < g);
            if (better >= s.spec.groups_used) std::fill(eligible + g * per_group, eligible + (g + 1) * per_group, 0);
        }
    }
    // Top-k by (probability + selection bias) among the eligible, highest first; ties to the lower id.
    for (int j = 0; j < s.top_k; ++j) ids[j] = -1;
    for (int e = 0; e < s.experts; ++e) {
        if (!eligible[e]) continue;
        int pos = s.top_k;
        while (pos > 0 && (ids[pos - 1] < 0 || key(e) > key(ids[pos - 1]))) --pos;
        if (pos >= s.top_k) continue;
        for (int j = s.top_k - 1; j > pos; --j) ids[j] = ids[j - 1];
        ids[pos] = e;
    }
    float total = 0;
    for (int j = 0; j < s.top_k; ++j) total += (weights[j] = logits[ids[j]]);
    const float norm = s.spec.normalize && total > 0 ? 1.0f / total : 1.0f;
    for (int j = 0; j < s.top_k; ++j) weights[j] *= norm * s.spec.scale;
}

namespace {

// Runs body(b, e) over [begin, end) in `meetings` steps, all workers meeting at a barrier after
// each step (every worker calls it equally often, with or without work); no meetings: one step.
template <class Body>
void in_steps(ThreadPool& pool, int begin, int end, int meetings, Body body) {
    if (meetings == 0) {
        body(begin, end);
        return;
    }
    for (int m = 0; m < meetings; ++m) {
        auto [b, e] = share(end - begin, meetings, m);
        body(begin + b, begin + e);
        pool.barrier();
    }
}

}  // namespace

void MoeEngine::run_experts(Experts& E, const float* x, const int* ids, const float* weights, int k, float* y,
                            bool accumulate, int barriers) {
    // Emulated synchronisation: half the barriers between steps of gate/up, half of down, so that
    // the workers are held in step through the work as a graph engine's are between its nodes.
    const int up_meetings = barriers / 2, down_meetings = barriers - up_meetings;
    Scratch& S = *scratch_;
    const QuantKernels& q = quant_kernels();
    // The activation, quantized once for all experts (once more only if gate and up differ).
    q.quantize_activation(E.gate_type, x, E.hidden, S.x_gate_q.data());
    const bool same = type_info(E.gate_type).activation == type_info(E.up_type).activation;
    if (!same) q.quantize_activation(E.up_type, x, E.hidden, S.x_up_q.data());
    const void* x_up = same ? S.x_gate_q.data() : S.x_up_q.data();
    const bool partition = placement_ == Placement::partition;
    const size_t groups = group_workers_.size();

    // Phase 1: h_j = silu(gate_j·x) ⊙ (up_j·x), one unit (expert, unit_rows rows) at a time;
    // each block of h is quantized for the down projection as soon as its last unit is done.
    // Which slice (or copy) a worker reads, and its place among the workers sharing the work:
    // under partition each node computes its own slice with its own workers; every other
    // placement (replicate included: each worker reads its node's full copy) splits the whole
    // work over all workers. Splitting it per copy would compute it once per node, and two
    // nodes' workers writing the same rows of y would race and add them twice.
    struct Part { const Slice& slice; int group, parts, index; };
    auto part_of = [&](int worker) {
        const int group = group_of_worker_[worker];
        const auto& members = group_workers_[group];
        const int index = partition ? static_cast<int>(std::find(members.begin(), members.end(), worker) - members.begin())
                                    : worker;
        return Part{E.slices[E.slices.size() == 1 ? 0 : group], group,
                    partition ? static_cast<int>(members.size()) : pool_->size(), index};
    };

    // Units are (expert j, unit_rows rows) of a slice; slices start on block boundaries, and a
    // block is a whole number of units, so no unit straddles two blocks. All slices use one unit
    // size (the smallest any of them needs), which sets every block's countdown the same way.
    int unit_rows = E.block_rows;
    for (const Slice& slice : E.slices) {
        const int parts = partition ? static_cast<int>(group_workers_[slice.group].size()) : pool_->size();
        unit_rows = std::min(unit_rows, work_rows(E.block_rows, k, slice.row_end - slice.row_begin, parts));
    }
    for (int j = 0; j < k; ++j) {
        for (int b = 0; b < E.blocks; ++b) {
            const int rows = std::min(E.block_rows, E.intermediate - b * E.block_rows);
            S.pending[static_cast<size_t>(j) * E.blocks + b].store((rows + unit_rows - 1) / unit_rows,
                                                                     std::memory_order_relaxed);
        }
    }
    auto up_job = [&](int worker) {
        const auto [slice, group, parts, index] = part_of(worker);
        const int first_unit = slice.row_begin / unit_rows;
        const int slice_units = (slice.row_end - slice.row_begin + unit_rows - 1) / unit_rows;
        auto [u0, u1] = share(k * slice_units, parts, index);
        in_steps(*pool_, u0, u1, up_meetings, [&](int step_begin, int step_end) {
            for (int u = step_begin; u < step_end; ++u) {
                const int j = u / slice_units;
                const int r0 = (first_unit + u % slice_units) * unit_rows;
                const int rows = std::min(unit_rows, E.intermediate - r0);
                const size_t local_row = static_cast<size_t>(r0 - slice.row_begin);
                float gate_out[256], up_out[256];   // unit_rows ≤ block_rows ≤ 256
                const uint8_t* g = slice.gate->data() + ids[j] * slice.gate_expert_bytes + local_row * E.gate_row_bytes;
                const uint8_t* v = slice.up->data() + ids[j] * slice.up_expert_bytes + local_row * E.up_row_bytes;
                q.gemv(E.gate_type, g, E.gate_row_bytes, rows, S.x_gate_q.data(), E.hidden, gate_out);
                q.gemv(E.up_type, v, E.up_row_bytes, rows, x_up, E.hidden, up_out);
                float* h = S.h.data() + static_cast<size_t>(j) * E.intermediate;
                for (int r = 0; r < rows; ++r) h[r0 + r] = silu(gate_out[r]) * up_out[r];
                // The unit that finishes a block quantizes it; acq_rel makes the other units' rows
                // of h visible to it.
                const int b = r0 / E.block_rows;
                if (S.pending[static_cast<size_t>(j) * E.blocks + b].fetch_sub(1, std::memory_order_acq_rel) == 1) {
                    const int b0 = b * E.block_rows;
                    q.quantize_activation(E.down_type, h + b0, std::min(E.block_rows, E.intermediate - b0),
                                          S.h_q.data() + j * S.h_q_stride + activation_offset(E.down_type, b0));
                }
            }
        });
    };
    pool_->run(up_job);

    // Phase 2: down projection, rows of y split over the workers. Under partition each node
    // multiplies its own columns (its slice of h) and the nodes' partial sums are added after.
    auto down_job = [&](int worker) {
        const auto [slice, group, parts, index] = part_of(worker);
        auto [r0, r1] = share(E.hidden, parts, index);
        float* out = partition ? S.partial.data() + static_cast<size_t>(group) * E.hidden : y;
        // One long gemv per expert over this worker's rows keeps the prefetcher streaming.
        float* tmp = S.down_out.data() + static_cast<size_t>(worker) * S.down_out_stride;
        const size_t h_offset = activation_offset(E.down_type, slice.row_begin);
        const int cols = slice.row_end - slice.row_begin;
        in_steps(*pool_, r0, r1, down_meetings, [&](int a, int b) {
            if (b <= a) return;
            if (partition || !accumulate) std::fill(out + a, out + b, 0.0f);
            for (int j = 0; j < k; ++j) {
                const uint8_t* base = slice.down->data() + ids[j] * slice.down_expert_bytes;
                const void* hq = S.h_q.data() + j * S.h_q_stride + h_offset;
                q.gemv(E.down_type, base + static_cast<size_t>(a) * slice.down_row_bytes, slice.down_row_bytes,
                       b - a, hq, cols, tmp);
                for (int r = a; r < b; ++r) out[r] += weights[j] * tmp[r - a];
            }
        });
    };
    pool_->run(down_job);
    if (partition) {
        if (!accumulate) std::fill(y, y + E.hidden, 0.0f);
        for (size_t g = 0; g < groups; ++g) {
            const float* p = S.partial.data() + g * E.hidden;
            for (int r = 0; r < E.hidden; ++r) y[r] += p[r];
        }
    }
}

DecodeStats MoeEngine::decode_bench(int tokens, int warmup, uint64_t seed) {
    if (layers_.empty()) throw std::invalid_argument("no layers loaded");
    ThreadPool::CallerScope scope(*pool_);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Scratch& S = *scratch_;
    double bytes = 0;
    DecodeStats stats;
    // The tokens' inputs are drawn before the clock starts (up to 64, then reused): drawing
    // normals took about 1 % of a decode, which is not the engine's work.
    const int hidden0 = layers_[0]->source.hidden;
    const int distinct = std::max(1, std::min(tokens + warmup, 64));
    std::vector<float> inputs(static_cast<size_t>(distinct) * hidden0);
    for (float& v : inputs) v = normal(rng);
    int drawn = 0;
    auto step = [&](bool count) {
        const float* input = inputs.data() + static_cast<size_t>(drawn++ % distinct) * hidden0;
        std::copy(input, input + hidden0, S.x.begin());
        for (auto& layer_ptr : layers_) {
            Layer& L = *layer_ptr;
            const int h = L.source.hidden;
            forward(L, S.x.data(), S.xnext.data(), S.ids.data(), S.weights.data());
            // Next layer's input: residual plus output, RMS-normalised (all layers share a width).
            double ss = 0;
            for (int i = 0; i < h; ++i) ss += double(S.x[i] + S.xnext[i]) * (S.x[i] + S.xnext[i]);
            const float inv = static_cast<float>(1.0 / std::sqrt(ss / h + 1e-6));
            for (int i = 0; i < h; ++i) S.x[i] = (S.x[i] + S.xnext[i]) * inv;
            if (count) {
                bytes += L.router_bytes + static_cast<double>(L.source.top_k) * L.routed.expert_bytes +
                         L.always.expert_bytes + L.always_gate_bytes;
            }
        }
    };
    for (int t = 0; t < warmup; ++t) step(false);
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < tokens; ++t) step(true);
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stats.tokens = tokens;
    stats.bytes_per_token = tokens > 0 ? bytes / tokens : 0;
    return stats;
}

std::map<std::string, std::map<int, size_t>> MoeEngine::placement(size_t samples_per_group) const {
    std::map<std::string, std::map<int, size_t>> out;
    const char* kind = placement_ == Placement::replicate ? "copy" : "slice";
    // Routed experts as gate/up/down; shared experts and dense FFNs as ffn-gate/ffn-up/ffn-down.
    for (const auto& layer : layers_) {
        for (const auto& [prefix, set] : {std::pair<std::string, const Experts*>{"", &layer->routed},
                                          {"ffn-", &layer->always}}) {
            for (const Slice& s : set->slices) {
                const std::string suffix = set->slices.size() > 1
                    ? "/" + std::string(kind) + "@node" + std::to_string(nodes_[s.group]) : "";
                const size_t per_tensor = std::max<size_t>(1, samples_per_group / layers_.size());
                for (auto [name, region] : {std::pair<const char*, const Region*>{"gate", s.gate.get()},
                                            {"up", s.up.get()}, {"down", s.down.get()}}) {
                    for (auto [node, pages] : page_nodes(region->data(), region->size(), per_tensor)) {
                        out[prefix + name + suffix][node] += pages;
                    }
                }
            }
        }
    }
    return out;
}

std::vector<int> MoeEngine::worker_cpus() { return pool_->observed_cpus(); }

size_t MoeEngine::resident_bytes() const {
    size_t total = 0;
    for (const auto& layer : layers_) {
        for (const Experts* set : {&layer->routed, &layer->always}) {
            for (const Slice& s : set->slices) total += s.gate->size() + s.up->size() + s.down->size();
        }
    }
    return total;
}

}  // namespace numatune
