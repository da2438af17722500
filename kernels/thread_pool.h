// A fixed pool of worker threads, each pinned to one CPU, that run one job at a time together.
//
// Decode runs a few short jobs per layer per token, so dispatch must cost microseconds: workers
// spin on a generation counter for a while before sleeping, and nothing is allocated per job.
// The calling thread is worker 0: it is pinned to the first CPU for the duration of a
// CallerScope, so that no thread ever competes with a worker for a CPU (with N CPUs there are
// N-1 pool threads plus the caller).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace numatune {

class ThreadPool {
public:
    // Starts one worker per CPU, pinned to it. Throws std::invalid_argument naming the CPU when
    // a worker cannot be pinned (CPU offline, outside the cpuset, or not a CPU at all).
    explicit ThreadPool(const std::vector<int>& cpus);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(cpus_.size()); }
    int cpu_of(int worker) const { return cpus_[worker]; }

    // Runs job(worker) on every worker (the caller is worker 0) and returns when all are done.
    // Call it inside a CallerScope. Not reentrant.
    template <class Job>
    void run(Job& job) {
        dispatch(&job, [](void* ctx, int worker) { (*static_cast<Job*>(ctx))(worker); });
    }

    // Pins the calling thread to the pool's first CPU; restores its affinity when it ends.
    class CallerScope {
    public:
        explicit CallerScope(const ThreadPool& pool);
        ~CallerScope();
    private:
        std::vector<unsigned char> saved_;
        bool restore_ = false;
    };

    // CPU each worker last ran on (sched_getcpu inside the worker): proof of pinning for tests.
    std::vector<int> observed_cpus();

    // Called by every worker of a running job: returns when all size() workers have arrived.
    // A counting barrier on two atomics that spins (yielding after a while), the way ggml's CPU
    // back end meets its threads after every graph node; used to emulate another engine's
    // synchronisation. Every job's workers must call it the same number of times.
    void barrier();
    // Barriers completed since the pool started (each counted once, when its last worker arrives).
    uint64_t barriers_passed() const { return barriers_passed_.load(std::memory_order_acquire); }

private:
    using Trampoline = void (*)(void*, int);
    void dispatch(void* ctx, Trampoline fn);
    void worker_main(int index);
    void shutdown();

    std::vector<int> cpus_;
    std::vector<std::thread> threads_;
    std::vector<int> pin_errors_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> remaining_{0};
    std::atomic<bool> stopping_{false};
    std::atomic<int> sleepers_{0};
    alignas(64) std::atomic<int> barrier_arrived_{0};
    alignas(64) std::atomic<uint64_t> barriers_passed_{0};
    void* job_ctx_ = nullptr;
    Trampoline job_fn_ = nullptr;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::vector<int> observed_;
};

}  // namespace numatune
