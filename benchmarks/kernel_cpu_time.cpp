// gemv of one row-kernel variant against a plain read of the same bytes, timed by the thread's
// CPU time (CLOCK_THREAD_CPUTIME_ID), so that time spent descheduled on a shared machine is not
// counted: on the loaded build VM wall-clock samples of the same kernel varied 4x, CPU-time ones
// a few percent. One thread. KIB of rows (7168 wide) are tiled from 64 quantized rows per type;
// with a few hundred KiB the rows stay in L2 (what the kernel computes at most), with 256 MiB
// they come from memory. Prints weight GB/s (median and best of ROUNDS, each REPEATS gemv calls),
// the read's GB/s and their ratio. Never asserts. The rows lie in 2 MiB-aligned memory advised for
// transparent huge pages, as the engine's weights do (placement.cpp): on 4 KiB pages the same
// kernels and read ran about a third slower from memory on the Zen 4 VM of docs/benchmarks.md.
//
//   python -c "import numpy as np; from numatune import quants, _kernels; rng = np.random.default_rng(0)
//   [quants.quantize(rng.standard_normal((64, 7168)).astype(np.float32), t).tofile(f'/tmp/{t}.bin')
//    for t in _kernels.supported_types()]"
//   g++ -O2 -mavx2 -DNUMATUNE_X86_VARIANTS=1 -Ikernels benchmarks/kernel_cpu_time.cpp \
//       build/temp.*/kernels/{dot_avx2,dot_avx512,quant_ref,quant_dispatch,cpu_features,quant_iq}.o -o /tmp/kernel_cpu_time
//   /tmp/kernel_cpu_time /tmp Q4_0,Q3_K avx2,avx512-vnni 384 50 7        # in L2
//   /tmp/kernel_cpu_time /tmp Q4_0,Q3_K avx2,avx512-vnni 262144 1 5      # from memory
// (after `python setup.py build_ext --inplace`, from the repository root)
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <algorithm>
#include <sched.h>
#include <sys/mman.h>
#include "quant.h"
using namespace numatune;
static double now() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
__attribute__((noinline)) uint64_t read_sum(const uint8_t* p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i*)(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i*)(p + i + 32)));
    }
    a = _mm256_add_epi64(a, b);
    return _mm256_extract_epi64(a, 0) + _mm256_extract_epi64(a, 3);
}
int main(int argc, char** argv) {
    if (argc != 7) { fprintf(stderr, "usage: kernel_cpu_time TILES_DIR TYPES VARIANTS KIB REPEATS ROUNDS\n"); return 2; }
    std::string tiles = argv[1];
    argv += 1;
    std::string types = argv[1], variants = argv[2];
    size_t kib = atol(argv[3]); int repeats = atoi(argv[4]); int rounds = atoi(argv[5]);
    auto split = [](std::string s) { std::vector<std::string> v; size_t p; while ((p = s.find(',')) != std::string::npos) { v.push_back(s.substr(0, p)); s = s.substr(p + 1);} v.push_back(s); return v; };
    for (auto& tn : split(types)) {
        const TypeInfo* info = find_type(tn);
        FILE* f = fopen((tiles + "/" + tn + ".bin").c_str(), "rb");
        if (f == nullptr) { fprintf(stderr, "%s/%s.bin: missing\n", tiles.c_str(), tn.c_str()); return 2; }
        std::vector<uint8_t> tile(1 << 22); size_t got = fread(tile.data(), 1, tile.size(), f); fclose(f); tile.resize(got);
        const int n = 7168; size_t rb = row_bytes(info->type, n);
        size_t rows = std::max<size_t>(2, kib * 1024 / rb);
        const size_t huge = size_t(2) << 20, bytes = rows * rb, mapped = (bytes + huge - 1) / huge * huge;
        uint8_t* base = static_cast<uint8_t*>(aligned_alloc(huge, mapped));
        madvise(base, mapped, MADV_HUGEPAGE);   // advisory, as in the engine
        struct Rows { uint8_t* p; size_t n; uint8_t* data() const { return p; } size_t size() const { return n; } } w{base, bytes};
        for (size_t r = 0; r < rows; ++r) memcpy(&w.p[r * rb], &tile[(r % 64) * rb], rb);
        std::vector<float> x(n); srand(1); for (auto& v : x) v = (rand() / (float)RAND_MAX) - 0.5f;
        std::vector<float> xq(activation_bytes(info->type, n) / 4 + 16);
        std::vector<float> y(rows);
        for (auto& vn : split(variants)) {
            const QuantKernels* k = nullptr;
            for (auto* v : quant_kernel_variants()) if (vn == v->name) k = v;
            if (k == nullptr) { fprintf(stderr, "%s: no such variant here\n", vn.c_str()); return 2; }
            k->quantize_activation(info->type, x.data(), n, xq.data());
            std::vector<double> gk, gr;
            for (int round = 0; round < rounds; ++round) {
                k->gemv(info->type, w.data(), rb, rows, xq.data(), n, y.data());
                double t0 = now();
                for (int i = 0; i < repeats; ++i) k->gemv(info->type, w.data(), rb, rows, xq.data(), n, y.data());
                double t1 = now();
                volatile uint64_t s = 0;
                for (int i = 0; i < repeats; ++i) s += read_sum(w.data(), w.size());
                double t2 = now();
                gk.push_back(w.size() * repeats / (t1 - t0) / 1e9);
                gr.push_back(w.size() * repeats / (t2 - t1) / 1e9);
            }
            std::sort(gk.begin(), gk.end()); std::sort(gr.begin(), gr.end());
            printf("%-6s %-16s %7zu KiB  kernel %6.2f (max %6.2f)  read %6.2f  ratio %.2f  y0=%g\n", tn.c_str(), vn.c_str(), w.size() / 1024,
                   gk[gk.size() / 2], gk.back(), gr[gr.size() / 2], gk[gk.size() / 2] / gr[gr.size() / 2], y[0]);
        }
        free(base);
    }
}
