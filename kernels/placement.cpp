#include "placement.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "numa_syscalls.h"

namespace numatune {
namespace {

size_t page_size() {
    static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return size;
}

constexpr size_t kHugePage = 2u << 20;

std::string node_list(const std::vector<int>& nodes) {
    std::string out;
    for (int n : nodes) out += (out.empty() ? "" : ",") + std::to_string(n);
    return out;
}

}  // namespace

Region::Region(size_t bytes, MemPolicy policy, const std::vector<int>& nodes) {
    size_ = bytes;
    // Whole huge pages, so that transparent huge pages can back all of it.
    mapped_ = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    if (mapped_ == 0) mapped_ = kHugePage;
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        throw std::runtime_error("cannot map " + std::to_string(mapped_) + " bytes: " + std::strerror(errno));
    }
    data_ = static_cast<uint8_t*>(p);
    madvise(data_, mapped_, MADV_HUGEPAGE);  // advisory: fails harmlessly where THP is absent
    if (policy == MemPolicy::inherit) return;
    if (nodes.empty()) {
        munmap(data_, mapped_);
        throw std::invalid_argument("a bind or interleave placement needs at least one node");
    }
    numa::NodeMask mask(nodes);
    int mode = policy == MemPolicy::bind ? numa::MPOL_BIND : numa::MPOL_INTERLEAVE;
    if (numa::mbind(data_, mapped_, mode, &mask, 0) != 0) {
        int err = errno;
        munmap(data_, mapped_);
        throw std::invalid_argument("cannot place memory on node(s) " + node_list(nodes) + ": mbind: " +
                                    std::strerror(err) + " (node absent, without memory, or not allowed)");
    }
}

Region::~Region() {
    if (data_ != nullptr) munmap(data_, mapped_);
}

std::map<int, size_t> page_nodes(const void* addr, size_t bytes, size_t max_samples) {
    std::map<int, size_t> counts;
    const size_t page = page_size();
    const uintptr_t first = reinterpret_cast<uintptr_t>(addr) / page * page;
    const size_t pages = (reinterpret_cast<uintptr_t>(addr) + bytes - first + page - 1) / page;
    if (pages == 0 || max_samples == 0) return counts;
    const size_t samples = pages < max_samples ? pages : max_samples;
    std::vector<void*> where(samples);
    for (size_t i = 0; i < samples; ++i) {
        size_t index = samples == pages ? i : i * pages / samples;
        where[i] = reinterpret_cast<void*>(first + index * page);
    }
    std::vector<int> status(samples, 0);
    if (numa::query_pages(where.data(), samples, status.data()) != 0) {
        counts[-errno] += samples;
        return counts;
    }
    for (int s : status) counts[s == -ENOENT ? -1 : s] += 1;
    return counts;
}

}  // namespace numatune
