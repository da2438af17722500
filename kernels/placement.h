// Anonymous memory placed on NUMA nodes with the kernel's own policy calls, and the query of
// where its pages really are.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

namespace numatune {

// How a region's pages are placed when first touched.
enum class MemPolicy {
    inherit,     // the thread's policy (numactl's, or the kernel default: the touching thread's node)
    bind,        // only the given nodes (one node in practice)
    interleave,  // page by page, round robin over the given nodes
};

// A page-aligned anonymous mapping with a memory policy, freed on destruction.
class Region {
public:
    // Throws std::invalid_argument naming the node(s) when mbind refuses them, and
    // std::runtime_error when the mapping itself fails.
    Region(size_t bytes, MemPolicy policy, const std::vector<int>& nodes);
    ~Region();
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;

    uint8_t* data() const { return data_; }
    size_t size() const { return size_; }

private:
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
    size_t mapped_ = 0;
};

// Node of each sampled page of [addr, addr+bytes) (at most max_samples pages, evenly spread),
// counted per node; pages not yet faulted in count under -1 (and other errors under -errno).
std::map<int, size_t> page_nodes(const void* addr, size_t bytes, size_t max_samples);

}  // namespace numatune
