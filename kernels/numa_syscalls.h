// The kernel's NUMA memory-policy system calls, called directly: no build dependency on libnuma.
#pragma once
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace numatune::numa {

// Values from <linux/mempolicy.h>.
constexpr int MPOL_DEFAULT = 0;
constexpr int MPOL_PREFERRED = 1;
constexpr int MPOL_BIND = 2;
constexpr int MPOL_INTERLEAVE = 3;
constexpr int MPOL_LOCAL = 4;
constexpr unsigned MPOL_MF_STRICT = 1u << 0;
constexpr unsigned MPOL_MF_MOVE = 1u << 1;
constexpr unsigned long MPOL_F_NODE = 1ul << 0;
constexpr unsigned long MPOL_F_ADDR = 1ul << 1;

// Node mask as the kernel reads it: an array of unsigned longs, bit n = node n.
struct NodeMask {
    std::vector<unsigned long> words;
    explicit NodeMask(const std::vector<int>& nodes) {
        int highest = 0;
        for (int n : nodes) highest = n > highest ? n : highest;
        words.assign(static_cast<size_t>(highest) / (8 * sizeof(unsigned long)) + 1, 0ul);
        for (int n : nodes) words[n / (8 * sizeof(unsigned long))] |= 1ul << (n % (8 * sizeof(unsigned long)));
    }
    // maxnode as the kernel wants it: number of bits in the mask, plus one (it ignores the last).
    unsigned long maxnode() const { return words.size() * 8 * sizeof(unsigned long) + 1; }
};

inline long mbind(void* addr, size_t len, int mode, const NodeMask* mask, unsigned flags) {
    return syscall(SYS_mbind, addr, len, mode, mask ? mask->words.data() : nullptr,
                   mask ? mask->maxnode() : 0ul, flags);
}

inline long set_mempolicy(int mode, const NodeMask* mask) {
    return syscall(SYS_set_mempolicy, mode, mask ? mask->words.data() : nullptr,
                   mask ? mask->maxnode() : 0ul);
}

// Node of the page holding addr (the page must be faulted in), or -errno.
inline int node_of_address(void* addr) {
    int node = -1;
    long rc = syscall(SYS_get_mempolicy, &node, nullptr, 0ul, addr, MPOL_F_NODE | MPOL_F_ADDR);
    return rc == 0 ? node : -errno;
}

// Where each page is: move_pages with no target nodes only queries. status[i] is the node
// or a negative errno (e.g. -ENOENT for a page not yet faulted in).
inline long query_pages(void* const* pages, size_t count, int* status) {
    return syscall(SYS_move_pages, 0, static_cast<unsigned long>(count), pages, nullptr, status, 0);
}

}  // namespace numatune::numa
