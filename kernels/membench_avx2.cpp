// AVX2 loops of the bandwidth benchmark (compiled with -mavx2 -mfma, run only where CPUID allows).
//
// There is deliberately no AVX-512 variant: a streaming loop is limited by how many cache-line
// misses a core keeps in flight, not by the width of its loads; 256-bit loads already move
// 64 B per cycle from L1, several times what one core gets from memory. Wider registers would
// only risk the lower AVX-512 clock of some Xeons.
//
// copy and triad use non-temporal stores: an ordinary store first reads the destination line
// into the cache (write-allocate), so memory moves 1.5× (copy) or 1.33× (triad) the bytes that
// STREAM counts. Streaming stores skip that read, so the figure reported is the bytes the
// memory actually moved, and the destination does not evict the sources from the cache.
#include <immintrin.h>

#include <cstdint>

#include "membench.h"

namespace numatune::membench {
namespace {

constexpr uintptr_t kVectorBytes = 32;

bool vector_aligned(const void* p) { return (reinterpret_cast<uintptr_t>(p) % kVectorBytes) == 0; }

double read_avx2(const double* a, size_t n) {
    double total = 0;
    size_t i = 0;
    for (; i < n && !vector_aligned(a + i); ++i) total += a[i];
    // Eight independent vector sums (two cache lines per step): enough additions in flight to
    // cover their latency, so the loop waits only for memory.
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_pd(s0, _mm256_load_pd(a + i));
        s1 = _mm256_add_pd(s1, _mm256_load_pd(a + i + 4));
        s2 = _mm256_add_pd(s2, _mm256_load_pd(a + i + 8));
        s3 = _mm256_add_pd(s3, _mm256_load_pd(a + i + 12));
        s4 = _mm256_add_pd(s4, _mm256_load_pd(a + i + 16));
        s5 = _mm256_add_pd(s5, _mm256_load_pd(a + i + 20));
        s6 = _mm256_add_pd(s6, _mm256_load_pd(a + i + 24));
        s7 = _mm256_add_pd(s7, _mm256_load_pd(a + i + 28));
    }
    const __m256d sum = _mm256_add_pd(_mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)),
                                      _mm256_add_pd(_mm256_add_pd(s4, s5), _mm256_add_pd(s6, s7)));
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, sum);
    total += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; ++i) total += a[i];
    return total;
}

void copy_avx2(const double* a, double* b, size_t n) {
    size_t i = 0;
    for (; i < n && !vector_aligned(b + i); ++i) b[i] = a[i];
    for (; i + 16 <= n; i += 16) {
        const __m256d v0 = _mm256_loadu_pd(a + i), v1 = _mm256_loadu_pd(a + i + 4);
        const __m256d v2 = _mm256_loadu_pd(a + i + 8), v3 = _mm256_loadu_pd(a + i + 12);
        _mm256_stream_pd(b + i, v0);
        _mm256_stream_pd(b + i + 4, v1);
        _mm256_stream_pd(b + i + 8, v2);
        _mm256_stream_pd(b + i + 12, v3);
    }
    for (; i < n; ++i) b[i] = a[i];
    _mm_sfence();  // streaming stores are weakly ordered: make them visible before returning
}

void triad_avx2(double* a, const double* b, const double* c, double scalar, size_t n) {
    size_t i = 0;
    for (; i < n && !vector_aligned(a + i); ++i) a[i] = b[i] + scalar * c[i];
    const __m256d s = _mm256_set1_pd(scalar);
    for (; i + 16 <= n; i += 16) {
        const __m256d v0 = _mm256_fmadd_pd(s, _mm256_loadu_pd(c + i), _mm256_loadu_pd(b + i));
        const __m256d v1 = _mm256_fmadd_pd(s, _mm256_loadu_pd(c + i + 4), _mm256_loadu_pd(b + i + 4));
        const __m256d v2 = _mm256_fmadd_pd(s, _mm256_loadu_pd(c + i + 8), _mm256_loadu_pd(b + i + 8));
        const __m256d v3 = _mm256_fmadd_pd(s, _mm256_loadu_pd(c + i + 12), _mm256_loadu_pd(b + i + 12));
        _mm256_stream_pd(a + i, v0);
        _mm256_stream_pd(a + i + 4, v1);
        _mm256_stream_pd(a + i + 8, v2);
        _mm256_stream_pd(a + i + 12, v3);
    }
    for (; i < n; ++i) a[i] = b[i] + scalar * c[i];
    _mm_sfence();
}

}  // namespace

const Loops& avx2_loops() {
    static const Loops loops{"avx2", read_avx2, copy_avx2, triad_avx2};
    return loops;
}

}  // namespace numatune::membench
