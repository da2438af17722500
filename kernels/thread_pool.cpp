#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace numatune {
namespace {

// Half a millisecond of spinning before a worker sleeps: longer than the gap between the jobs
// of one token, short enough not to burn a core when the engine sits idle. Measured in time,
// since the cost of a pause instruction differs tenfold between CPU generations.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(500);
// Pause instructions a barrier spins before it starts yielding its CPU: a few tens of
// microseconds, enough for a peer that is running; one that was preempted is waited for politely.
constexpr int kBarrierSpins = 1 << 14;

int pin_current_thread(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

}  // namespace

ThreadPool::ThreadPool(const std::vector<int>& cpus) : cpus_(cpus) {
    if (cpus_.empty()) throw std::invalid_argument("a thread pool needs at least one CPU");
    for (int cpu : cpus_) {
        if (cpu < 0 || cpu >= CPU_SETSIZE) {
            throw std::invalid_argument("CPU " + std::to_string(cpu) + " is not a valid CPU number");
        }
    }
    pin_errors_.assign(cpus_.size(), 0);
    observed_.assign(cpus_.size(), -1);
    remaining_.store(static_cast<int>(cpus_.size()) - 1);
    for (size_t i = 1; i < cpus_.size(); ++i) {
        threads_.emplace_back([this, i] { worker_main(static_cast<int>(i)); });
    }
    while (remaining_.load() != 0) std::this_thread::yield();  // every worker has tried to pin
    for (size_t i = 1; i < cpus_.size(); ++i) {
        if (pin_errors_[i] != 0) {
            int cpu = cpus_[i];
            int err = pin_errors_[i];
            shutdown();
            throw std::invalid_argument("cannot pin a thread to CPU " + std::to_string(cpu) + ": " +
                                        std::strerror(err) + " (offline, outside the cpuset, or absent)");
        }
    }
    // The caller's CPU is checked the same way, without keeping the pin.
    cpu_set_t saved;
    pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved);
    int err = pin_current_thread(cpus_[0]);
    pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
    if (err != 0) {
        shutdown();
        throw std::invalid_argument("cannot pin a thread to CPU " + std::to_string(cpus_[0]) + ": " +
                                    std::strerror(err) + " (offline, outside the cpuset, or absent)");
    }
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::shutdown() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& t : threads_) {
        if (t.joinable()) t.join();
    }
    threads_.clear();
}

void ThreadPool::worker_main(int index) {
    pin_errors_[index] = pin_current_thread(cpus_[index]);
    remaining_.fetch_sub(1);
    if (pin_errors_[index] != 0) return;
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        auto spin_until = std::chrono::steady_clock::now() + kSpinBeforeSleep;
        while (generation_.load(std::memory_order_acquire) == seen && !stopping_.load()) {
            if ((++spins & 255) != 0 || std::chrono::steady_clock::now() < spin_until) {
                cpu_relax();
                continue;
            }
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1);
            wake_.wait(lock, [&] { return generation_.load() != seen || stopping_.load(); });
            sleepers_.fetch_sub(1);
        }
        if (stopping_.load()) return;
        seen = generation_.load(std::memory_order_acquire);
        job_fn_(job_ctx_, index);
        observed_[index] = sched_getcpu();
        remaining_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::dispatch(void* ctx, Trampoline fn) {
    job_ctx_ = ctx;
    job_fn_ = fn;
    remaining_.store(size() - 1, std::memory_order_relaxed);
    generation_.fetch_add(1);  // seq_cst: a worker that then registers as a sleeper sees it
    if (sleepers_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_.notify_all();
    }
    fn(ctx, 0);
    observed_[0] = sched_getcpu();
    while (remaining_.load(std::memory_order_acquire) != 0) cpu_relax();
}

std::vector<int> ThreadPool::observed_cpus() { return observed_; }

void ThreadPool::barrier() {
    const int workers = size();
    // Read before arriving: the last worker cannot move the count on before this one has arrived.
    const uint64_t passed = barriers_passed_.load(std::memory_order_acquire);
    if (barrier_arrived_.fetch_add(1, std::memory_order_seq_cst) == workers - 1) {
        barrier_arrived_.store(0, std::memory_order_relaxed);
        barriers_passed_.fetch_add(1, std::memory_order_seq_cst);
        return;
    }
    int spins = 0;
    while (barriers_passed_.load(std::memory_order_acquire) == passed) {
        if (++spins < kBarrierSpins) {
            cpu_relax();
        } else {
            std::this_thread::yield();
        }
    }
}

ThreadPool::CallerScope::CallerScope(const ThreadPool& pool) {
    cpu_set_t saved;
    if (pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) != 0) return;
    saved_.assign(reinterpret_cast<unsigned char*>(&saved),
                  reinterpret_cast<unsigned char*>(&saved) + sizeof(saved));
    restore_ = pin_current_thread(pool.cpu_of(0)) == 0;
}

ThreadPool::CallerScope::~CallerScope() {
    if (!restore_) return;
    cpu_set_t saved;
    std::memcpy(&saved, saved_.data(), sizeof(saved));
    pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
}

}  // namespace numatune
