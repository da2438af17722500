// Memory bandwidth benchmark: STREAM-style read, copy and triad over arrays placed on one memory
// node, run by threads pinned one per given CPU. Python (numatune/bandwidth.py) chooses the CPUs,
// the node and the array size; this file only measures.
#pragma once
#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace numatune::membench {

enum class Kernel { read, copy, triad };

// "read", "copy" or "triad"; std::invalid_argument otherwise.
Kernel kernel_from_name(const std::string& name);

struct Request {
    Kernel kernel = Kernel::read;
    std::vector<int> cpus;   // one thread per entry, pinned to that CPU; no duplicates
    int memory_node = -1;    // -1: no binding (pages land on the node of the thread that touches them)
    size_t array_bytes = 0;  // per array, rounded down to whole doubles
    int repeats = 5;         // timed repetitions (one untimed warm-up runs before them)
};

struct Result {
    std::vector<double> gbps;             // per repetition: decimal GB/s, bytes counted as STREAM does
    std::map<int, double> pages_on_node;  // fraction of sampled pages found on each node
    double checksum = 0;                  // sum of the array read (read) or written (copy, triad)
    size_t array_bytes = 0;               // per array, as used
    std::string isa;                      // loop variant that ran
};

// Throws std::invalid_argument for a request that cannot be placed (bad CPU, bad node, array
// too small) and std::runtime_error when the kernels' results fail verification.
Result run(const Request& request);

// Values the arrays are filled with, chosen so that every sum is an exact integer in double
// precision whatever the order of additions: read and copy see pattern(i), triad writes
// pattern(i) + kTriadScalar * pattern(i).
constexpr double kTriadScalar = 3.0;
inline double pattern(size_t i) { return static_cast<double>(i % 251); }

// The loops of one instruction-set variant, each over one thread's slice of n elements.
// copy and triad may use non-temporal stores; they fence before returning.
struct Loops {
    const char* isa;
    double (*read)(const double* a, size_t n);
    void (*copy)(const double* a, double* b, size_t n);
    void (*triad)(double* a, const double* b, const double* c, double scalar, size_t n);
};

const Loops& portable_loops();
#if NUMATUNE_X86_VARIANTS
const Loops& avx2_loops();
#endif

}  // namespace numatune::membench
