// How far ahead, and into which cache, a row kernel's weights are prefetched: included by
// dot_avx2.cpp and dot_avx512.cpp inside namespace numatune { namespace { ... } }.
//
// The hardware prefetcher alone falls behind once the loop also computes. kNear: 2 KiB ahead into
// L1. On a Zen 3 core (512 MiB of weights, AVX2), 2-3 KiB ahead lifted gemv from 11-13 to 15-17
// GB/s; 1 KiB gained less, 6 KiB lost some. On a Sapphire Rapids-class core (AVX-512, 256 MiB of
// rows), 1.5-2 KiB was best; 512 B, 4 KiB and more, L2 only (T1/T2) at 4-16 KiB, or non-temporal
// (NTA) all measured slower.
//
// kFar: 4 KiB ahead into L2 only, for the kernels that compute fastest per byte. On the Zen 4 VM
// of docs/benchmarks.md, AVX-512, one core, 256 MiB of rows on huge pages (as the engine's
// weights), share of the read loop's speed, kNear → kFar (three runs alternating): Q8_0 0.78-0.80
// → 0.88-0.92, Q4_1 0.61-0.64 → 0.79-0.83, Q5_0 0.51-0.52 → 0.70-0.71, Q5_K 0.56-0.62 →
// 0.73-0.74, Q4_0 0.66-0.71 → 0.71-0.75, IQ4_NL 0.60-0.66 → 0.66-0.73, Q5_1 0.57-0.61 →
// 0.63-0.64. The kernels that compute longest per byte did not gain (Q4_K 0.78-0.85 →
// 0.77-0.80, Q2_K 0.51-0.57 → 0.49-0.55, IQ4_XS 0.73-0.77 → 0.72-0.78), nor did the AVX2
// variant's quantized kernels (Q8_0 0.78-0.90 → 0.72-0.84): a line still in L2 when it is
// needed is a longer wait, which only the fast loops hide. Each kernel says which it uses.
#pragma once

enum class Reach { kNear, kFar };

template <Reach kReach>
inline __attribute__((always_inline)) void prefetch_line(const void* at) {
    const char* line = static_cast<const char*>(at);
    if constexpr (kReach == Reach::kNear) _mm_prefetch(line + 2048, _MM_HINT_T0);
    else _mm_prefetch(line + 4096, _MM_HINT_T1);
}

template <Reach kReach = Reach::kNear, class Block>
inline __attribute__((always_inline)) void prefetch_block(const Block* block) {
    const char* start = reinterpret_cast<const char*>(block);
    for (size_t offset = 0; offset < sizeof(Block); offset += 64) prefetch_line<kReach>(start + offset);
}
