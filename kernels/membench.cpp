// The memory bandwidth benchmark's driver (placement, threads, timing, verification) and its
// portable loops. Placement uses the kernel's system calls directly (numa_syscalls.h).
#include "membench.h"

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>

#include "cpu_features.h"
#include "numa_syscalls.h"

namespace numatune::membench {
namespace {

using Clock = std::chrono::steady_clock;

// Far above any real machine (Linux allows at most 8192 CPUs and 1024 nodes); only guards the
// size of the masks built from a caller's number.
constexpr int kMaxCpuId = 1 << 16;
constexpr int kMaxNodeId = 1 << 16;
constexpr size_t kHugePage = size_t{2} << 20;
// Slices start on 4 KiB boundaries so that each page is first touched by the thread that uses it.
constexpr size_t kSliceGranule = 4096 / sizeof(double);
constexpr size_t kSampledPagesPerArray = 512;

// ---- portable loops ----------------------------------------------------------------------------

double read_portable(const double* a, size_t n) {
    // Eight independent sums: a single running sum makes each addition wait for the previous
    // one, and the core then cannot keep enough loads in flight to saturate memory.
    double sums[8] = {};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; ++k) sums[k] += a[i + k];
    }
    double total = 0;
    for (double s : sums) total += s;
    for (; i < n; ++i) total += a[i];
    return total;
}

void copy_portable(const double* a, double* b, size_t n) {
    // The C library's memcpy is tuned per machine, non-temporal stores for large blocks included.
    std::memcpy(b, a, n * sizeof(double));
}

void triad_portable(double* a, const double* b, const double* c, double scalar, size_t n) {
    for (size_t i = 0; i < n; ++i) a[i] = b[i] + scalar * c[i];
}

const Loops& loops_for_active_isa() {
#if NUMATUNE_X86_VARIANTS
    // AVX-512 machines run the AVX2 loops: see membench_avx2.cpp for why there is no wider variant.
    if (active_isa() != Isa::scalar) return avx2_loops();
#endif
    return portable_loops();
}

size_t bytes_per_element(Kernel kernel) {
    switch (kernel) {
        case Kernel::read: return 8;
        case Kernel::copy: return 16;
        case Kernel::triad: return 24;
    }
    return 0;
}

int arrays_used(Kernel kernel) { return kernel == Kernel::read ? 1 : kernel == Kernel::copy ? 2 : 3; }

// ---- placement -----------------------------------------------------------------------------------

// Anonymous memory aligned to 2 MiB and advised for transparent huge pages (fewer TLB misses, so
// the loops measure memory rather than page walks), bound to a node before anything touches it.
class MappedArray {
public:
    MappedArray(size_t bytes, int node) : length_((bytes + kHugePage - 1) / kHugePage * kHugePage) {
        const size_t reserved = length_ + kHugePage;
        void* raw = mmap(nullptr, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
            throw std::runtime_error("cannot map " + std::to_string(bytes >> 20) +
                                     " MiB for the bandwidth benchmark: " + std::strerror(errno));
        }
        const auto start = reinterpret_cast<uintptr_t>(raw);
        const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
        if (aligned > start) munmap(raw, aligned - start);
        munmap(reinterpret_cast<void*>(aligned + length_), start + reserved - (aligned + length_));
        data_ = reinterpret_cast<double*>(aligned);
        madvise(data_, length_, MADV_HUGEPAGE);  // advisory: kernels without THP refuse, harmlessly
        if (node >= 0) bind(node);
    }
    ~MappedArray() { munmap(data_, length_); }
    MappedArray(const MappedArray&) = delete;
    MappedArray& operator=(const MappedArray&) = delete;

    double* data() const { return data_; }
    size_t length() const { return length_; }

private:
    void bind(int node) {
        const numa::NodeMask mask({node});
        if (numa::mbind(data_, length_, numa::MPOL_BIND, &mask, 0) == 0) return;
        const int error = errno;
        munmap(data_, length_);
        const std::string where = "memory node " + std::to_string(node);
        if (error == EINVAL) {
            throw std::invalid_argument(where + " does not exist, has no memory, or is not allowed "
                                                "to this process");
        }
        throw std::invalid_argument("cannot bind memory to " + where + ": " + std::strerror(error));
    }

    size_t length_;
    double* data_ = nullptr;
};

bool pin_to_cpu(int cpu) {
    cpu_set_t* set = CPU_ALLOC(cpu + 1);
    const size_t size = CPU_ALLOC_SIZE(cpu + 1);
    CPU_ZERO_S(size, set);
    CPU_SET_S(cpu, size, set);
    const bool pinned = pthread_setaffinity_np(pthread_self(), size, set) == 0;
    CPU_FREE(set);
    return pinned;
}

// Fraction of sampled pages of the arrays on each node, as the kernel reports it (move_pages
// without targets only queries). Pages it cannot place (status < 0) count towards no node.
std::map<int, double> pages_on_node(const std::vector<std::unique_ptr<MappedArray>>& arrays,
                                    size_t used_bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t pages_per_array = std::max<size_t>(1, used_bytes / page);
    const size_t step = std::max<size_t>(1, pages_per_array / kSampledPagesPerArray);
    std::vector<void*> pages;
    for (const auto& array : arrays) {
        auto* base = reinterpret_cast<char*>(array->data());
        for (size_t p = 0; p < pages_per_array; p += step) pages.push_back(base + p * page);
    }
    std::vector<int> status(pages.size(), 0);
    std::map<int, double> fractions;
    if (numa::query_pages(pages.data(), pages.size(), status.data()) != 0) return fractions;
    std::map<int, size_t> counts;
    for (int node : status) {
        if (node >= 0) ++counts[node];
    }
    for (const auto& [node, count] : counts) {
        fractions[node] = static_cast<double>(count) / static_cast<double>(pages.size());
    }
    return fractions;
}

// ---- threads -----------------------------------------------------------------------------------

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Reusable spinning barrier: the workers own their CPUs, so spinning releases them within
// nanoseconds of each other; after a while it yields, in case a CPU is shared after all.
class SpinBarrier {
public:
    explicit SpinBarrier(int parties) : parties_(parties) {}

    void wait() {
        const unsigned generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == parties_) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
            return;
        }
        for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
            if (spins < 4096) {
                cpu_relax();
            } else {
                std::this_thread::yield();
            }
        }
    }

private:
    const int parties_;
    alignas(64) std::atomic<int> arrived_{0};
    alignas(64) std::atomic<unsigned> generation_{0};
};

// What one worker records; only that worker writes it until it is joined.
struct alignas(64) WorkerRecord {
    std::vector<Clock::time_point> starts, ends;  // per timed repetition
    std::vector<double> read_sums;                // per timed repetition (read kernel)
    double checksum = 0;
    std::string pin_error, verify_error;
};

struct Job {
    Kernel kernel;
    const Loops* loops;
    double* a;
    double* b;
    double* c;
    size_t elements;
    int threads;
    int repeats;
    SpinBarrier* barrier;
    std::atomic<bool>* pin_failed;
};

struct Slice {
    size_t begin, end;
    size_t size() const { return end - begin; }
};

Slice slice_of(const Job& job, int thread) {
    auto boundary = [&](int t) {
        if (t == job.threads) return job.elements;
        return job.elements * static_cast<size_t>(t) / static_cast<size_t>(job.threads) /
               kSliceGranule * kSliceGranule;
    };
    return {boundary(thread), boundary(thread + 1)};
}

// First touch: the thread that will stream a slice writes it first, so without a node binding
// its pages land on that thread's node. Returns the sum of the pattern over the slice.
double first_touch(const Job& job, Slice s) {
    double pattern_sum = 0;
    for (size_t i = s.begin; i < s.end; ++i) {
        const double value = pattern(i);
        pattern_sum += value;
        switch (job.kernel) {
            case Kernel::read: job.a[i] = value; break;
            case Kernel::copy: job.a[i] = value; job.b[i] = 0; break;
            case Kernel::triad: job.a[i] = 0; job.b[i] = value; job.c[i] = value; break;
        }
    }
    return pattern_sum;
}

void run_once(const Job& job, Slice s, double& read_sum) {
    switch (job.kernel) {
        case Kernel::read: read_sum = job.loops->read(job.a + s.begin, s.size()); break;
        case Kernel::copy: job.loops->copy(job.a + s.begin, job.b + s.begin, s.size()); break;
        case Kernel::triad:
            job.loops->triad(job.a + s.begin, job.b + s.begin, job.c + s.begin, kTriadScalar, s.size());
            break;
    }
}

// Checks what the timed loops produced, so that a wrong or skipped loop cannot go unnoticed.
void verify(const Job& job, Slice s, double pattern_sum, WorkerRecord& record) {
    if (job.kernel == Kernel::read) {
        for (double sum : record.read_sums) {
            if (sum != pattern_sum) {
                record.verify_error = "read kernel summed " + std::to_string(sum) + " over elements " +
                                      std::to_string(s.begin) + "…" + std::to_string(s.end) +
                                      ", expected " + std::to_string(pattern_sum);
                return;
            }
        }
        record.checksum = record.read_sums.back();
        return;
    }
    const double* written = job.kernel == Kernel::copy ? job.b : job.a;
    const double factor = job.kernel == Kernel::copy ? 1.0 : 1.0 + kTriadScalar;
    double sum = 0;
    for (size_t i = s.begin; i < s.end; ++i) {
        if (written[i] != factor * pattern(i)) {
            record.verify_error = std::string(job.kernel == Kernel::copy ? "copy" : "triad") +
                                  " kernel wrote " + std::to_string(written[i]) + " at element " +
                                  std::to_string(i) + ", expected " + std::to_string(factor * pattern(i));
            return;
        }
        sum += written[i];
    }
    record.checksum = sum;
}

void worker(const Job& job, int thread, int cpu, WorkerRecord& record) {
    if (!pin_to_cpu(cpu)) {
        record.pin_error = "CPU " + std::to_string(cpu) + " does not exist or is not available to this "
                           "process (offline, or outside its affinity or cpuset)";
        job.pin_failed->store(true);
    }
    job.barrier->wait();
    if (job.pin_failed->load()) return;

    const Slice slice = slice_of(job, thread);
    const double pattern_sum = first_touch(job, slice);
    double warm_up_sum = 0;
    job.barrier->wait();
    run_once(job, slice, warm_up_sum);
    for (int r = 0; r < job.repeats; ++r) {
        job.barrier->wait();
        record.starts[r] = Clock::now();
        run_once(job, slice, record.read_sums[r]);
        record.ends[r] = Clock::now();
    }
    verify(job, slice, pattern_sum, record);
}

void validate(const Request& request) {
    if (request.cpus.empty()) throw std::invalid_argument("no CPU given for the bandwidth benchmark");
    std::vector<int> sorted = request.cpus;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
        if (sorted[i] < 0 || sorted[i] >= kMaxCpuId) {
            throw std::invalid_argument("CPU " + std::to_string(sorted[i]) + " does not exist");
        }
        if (i > 0 && sorted[i] == sorted[i - 1]) {
            throw std::invalid_argument("CPU " + std::to_string(sorted[i]) + " is given twice");
        }
    }
    if (request.memory_node < -1 || request.memory_node >= kMaxNodeId) {
        throw std::invalid_argument("memory node " + std::to_string(request.memory_node) + " does not exist");
    }
    if (request.repeats < 1) throw std::invalid_argument("repeats must be at least 1");
    if (request.array_bytes / sizeof(double) < request.cpus.size() * kSliceGranule) {
        throw std::invalid_argument("arrays of " + std::to_string(request.array_bytes) +
                                    " bytes are too small for " + std::to_string(request.cpus.size()) +
                                    " threads (at least 4 KiB per thread)");
    }
}

// Starts one worker per CPU and waits for all; throws what a worker could not do.
std::vector<WorkerRecord> run_workers(const Job& job, const std::vector<int>& cpus) {
    std::vector<WorkerRecord> records(cpus.size());
    for (WorkerRecord& record : records) {  // sized here: the timed loop must not allocate
        record.starts.resize(job.repeats);
        record.ends.resize(job.repeats);
        record.read_sums.resize(job.repeats);
    }
    std::vector<std::thread> workers;
    for (size_t t = 0; t < cpus.size(); ++t) {
        workers.emplace_back(worker, std::cref(job), static_cast<int>(t), cpus[t], std::ref(records[t]));
    }
    for (std::thread& w : workers) w.join();
    for (const WorkerRecord& record : records) {
        if (!record.pin_error.empty()) throw std::invalid_argument(record.pin_error);
        if (!record.verify_error.empty()) throw std::runtime_error(record.verify_error);
    }
    return records;
}

// A repetition lasts from the first thread's start to the last thread's end.
std::vector<double> gbps_per_repetition(const std::vector<WorkerRecord>& records, size_t bytes_moved) {
    std::vector<double> gbps;
    for (size_t r = 0; r < records[0].starts.size(); ++r) {
        Clock::time_point start = records[0].starts[r], end = records[0].ends[r];
        for (const WorkerRecord& record : records) {
            start = std::min(start, record.starts[r]);
            end = std::max(end, record.ends[r]);
        }
        gbps.push_back(static_cast<double>(bytes_moved) / std::chrono::duration<double>(end - start).count() / 1e9);
    }
    return gbps;
}

}  // namespace

Kernel kernel_from_name(const std::string& name) {
    if (name == "read") return Kernel::read;
    if (name == "copy") return Kernel::copy;
    if (name == "triad") return Kernel::triad;
    throw std::invalid_argument("unknown bandwidth kernel '" + name + "' (expected read, copy or triad)");
}

const Loops& portable_loops() {
    static const Loops loops{"scalar", read_portable, copy_portable, triad_portable};
    return loops;
}

Result run(const Request& request) {
    validate(request);
    const size_t elements = request.array_bytes / sizeof(double);
    const size_t used_bytes = elements * sizeof(double);
    std::vector<std::unique_ptr<MappedArray>> arrays;
    for (int i = 0; i < arrays_used(request.kernel); ++i) {
        arrays.push_back(std::make_unique<MappedArray>(used_bytes, request.memory_node));
    }
    SpinBarrier barrier(static_cast<int>(request.cpus.size()));
    std::atomic<bool> pin_failed{false};
    const Job job{request.kernel, &loops_for_active_isa(), arrays[0]->data(),
                  arrays.size() > 1 ? arrays[1]->data() : nullptr,
                  arrays.size() > 2 ? arrays[2]->data() : nullptr,
                  elements, static_cast<int>(request.cpus.size()), request.repeats, &barrier, &pin_failed};
    const std::vector<WorkerRecord> records = run_workers(job, request.cpus);

    Result result;
    for (const WorkerRecord& record : records) result.checksum += record.checksum;
    result.gbps = gbps_per_repetition(records, bytes_per_element(request.kernel) * elements);
    result.pages_on_node = pages_on_node(arrays, used_bytes);
    result.array_bytes = used_bytes;
    result.isa = job.loops->isa;
    return result;
}

}  // namespace numatune::membench
