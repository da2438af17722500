// The bundled MoE engine: the routed-expert part of a decoder layer, for batch-1 decode.
//
// Weights are copied from the memory-mapped GGUF into anonymous memory placed by policy;
// a pool of pinned workers, grouped by node, computes
//     y = Σ_k w_k · down_k( silu(gate_k · x) ⊙ (up_k · x) )  +  g · shared(x)
// with the activation quantized once per token and integer dot products (quant.h). A layer may
// also be dense (no router, no routed experts: only the always-computed FFN).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "placement.h"
#include "quant.h"
#include "thread_pool.h"

namespace numatune {

// numatune/policy.py's Policy, in the same order with the same numbers (bound as _kernels.Placement;
// tests/test_policy.py checks that the two agree).
enum class Placement { first_touch = 0, interleave = 1, bind = 2, replicate = 3, partition = 4 };

enum class Gating { softmax, sigmoid };

struct RouterSpec {
    Gating gating = Gating::softmax;
    bool normalize = true;           // renormalise the top-k weights to sum to one
    float scale = 1.0f;              // routed scaling factor applied after (DeepSeek: 2.5)
    int groups = 1;                  // expert groups (DeepSeek's n_group); experts split evenly
    int groups_used = 1;             // groups whose experts stay eligible (topk_group)
    bool weight_before = false;      // Llama 4: the input is scaled by the weight (top-1 only)
};

// A feed-forward network computed for every token: a shared expert or a dense layer's FFN.
struct FfnSource {
    int intermediate = 0;            // 0: none
    GgmlType gate_type{}, up_type{}, down_type{};
    const uint8_t* gate = nullptr;   // intermediate rows × hidden columns
    const uint8_t* up = nullptr;
    const uint8_t* down = nullptr;   // hidden rows × intermediate columns
    std::vector<float> gate_inp;     // hidden values, or empty: qwen2moe's sigmoid gate of its output
};

// One MoE layer as it sits in the GGUF file (pointers into the mapping, not owned).
// experts == 0 is a dense layer: only `always` is computed.
struct LayerSource {
    int experts = 0;
    int hidden = 0;                  // model width: columns of gate/up, rows of down
    int intermediate = 0;            // expert width: rows of gate/up, columns of down
    int top_k = 0;
    GgmlType gate_type{}, up_type{}, down_type{};
    const uint8_t* gate = nullptr;   // experts × intermediate rows × hidden columns
    const uint8_t* up = nullptr;
    const uint8_t* down = nullptr;   // experts × hidden rows × intermediate columns
    std::vector<float> router;       // experts × hidden, row-major, float32
    std::vector<float> router_bias;  // experts, or empty (DeepSeek's exp_probs_b: selection only)
    RouterSpec spec;
    FfnSource always;                // shared expert (or the dense FFN), or intermediate == 0
};

struct DecodeStats {
    int tokens = 0;
    double seconds = 0;
    double bytes_per_token = 0;      // weight bytes read per token (routers, selected and shared experts, dense FFNs)
};

class MoeEngine {
public:
    // cpus[i] runs worker i; cpu_nodes[i] is its NUMA node. `nodes` is the node set of the
    // placement (bind: one node; interleave: the set; replicate/partition: the nodes that get a
    // copy or a slice — each must have workers; first-touch: ignored).
    MoeEngine(const std::vector<int>& cpus, const std::vector<int>& cpu_nodes, Placement placement,
              const std::vector<int>& nodes);
    ~MoeEngine();

    // Copies a layer's experts into placed memory. Returns the layer index.
    int add_layer(const LayerSource& source);

    int layers() const { return static_cast<int>(layers_.size()); }
    int hidden(int layer) const;
    int top_k(int layer) const;

    // y = Σ_k weights[k] · expert_{ids[k]}(x) for the given routed experts (no router, no shared expert).
    void experts_forward(int layer, const float* x, const int* ids, const float* weights, int k, float* y);
    // Router (logits, gating, groups, top-k, normalisation), the experts and the shared expert or
    // dense FFN; returns the chosen ids (none for a dense layer).
    void moe_forward(int layer, const float* x, float* y, int* chosen_ids, float* chosen_weights);
    // Emulates another engine's synchronisation: in every layer's forward pass all workers meet at
    // `per_layer` barriers spread through the expert work (0: none, only the engine's own few
    // joins per layer).
    void set_sync_barriers(int per_layer);
    int sync_barriers() const { return sync_barriers_; }
    // Barriers all workers have passed so far (emulated ones only): evidence the count is honoured.
    uint64_t barriers_passed() const { return pool_->barriers_passed(); }
    // Runs `tokens` decode steps over all layers (after `warmup` untimed ones).
    DecodeStats decode_bench(int tokens, int warmup, uint64_t seed);

    // Sampled page placement of each tensor group: name → node → pages.
    std::map<std::string, std::map<int, size_t>> placement(size_t samples_per_group) const;
    // CPUs the workers actually ran on during the last job.
    std::vector<int> worker_cpus();
    size_t resident_bytes() const;   // bytes of placed weight memory (all copies)

private:
    struct Slice;                    // one copy (replicate) or one node's share (partition)
    struct Experts;                  // a placed set of experts of one shape (routed, or the one shared FFN)
    struct Layer;
    struct Scratch;
    void place(Experts& set, const uint8_t* gate, const uint8_t* up, const uint8_t* down);
    void size_scratch(const Experts& set, int max_k);
    void route(const Layer& layer, const float* x, int* ids, float* weights);
    void forward(Layer& layer, const float* x, float* y, int* ids, float* weights);
    // y (+)= Σ_j weights[j] · expert_{ids[j]}(x); accumulate adds to y instead of overwriting it;
    // the workers meet at `barriers` barriers spread through the work (emulated synchronisation).
    void run_experts(Experts& set, const float* x, const int* ids, const float* weights, int k, float* y,
                     bool accumulate, int barriers);

    std::unique_ptr<ThreadPool> pool_;
    std::vector<int> cpus_, cpu_nodes_, nodes_;
    std::vector<int> group_of_worker_;           // index into nodes_ (replicate/partition), else 0
    std::vector<std::vector<int>> group_workers_;
    Placement placement_;
    std::vector<std::unique_ptr<Layer>> layers_;
    std::unique_ptr<Scratch> scratch_;
    int sync_barriers_ = 0;
};

}  // namespace numatune
