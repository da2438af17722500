/* STREAM-like reference for benchmarks/bandwidth.py: the yardstick numatune's own bandwidth
 * kernels are compared against. Plain C and OpenMP, nothing machine-specific in the source: the
 * compiler (gcc -O3 -march=native -fopenmp) decides how to vectorise.
 *
 *   stream_ref ARRAY_BYTES REPEATS KERNEL...      KERNEL: read | copy | triad
 *
 * Threads, their number and their CPUs come from OMP_NUM_THREADS, OMP_PROC_BIND, OMP_PLACES.
 * For each kernel, stdout gets one line "KERNEL GB/s GB/s ..." (one figure per timed
 * repetition, after one untimed warm-up) and stderr a best/median summary. Bytes are counted
 * as STREAM does (read 8, copy 16, triad 24 per element; no write-allocate traffic), in
 * decimal GB. Exit status 1 if a kernel's result is wrong.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const double triad_scalar = 3.0;

/* Small integers: every sum is exact in double precision whatever the order of additions. */
static double pattern(size_t i) { return (double)(i % 251); }

static double *allocate(size_t elements) {
    void *p = NULL;
    const size_t bytes = elements * sizeof(double);
    if (posix_memalign(&p, (size_t)2 << 20, bytes) != 0) {
        fprintf(stderr, "stream_ref: cannot allocate %zu MiB\n", bytes >> 20);
        exit(2);
    }
    /* Huge pages where the kernel allows them, as numatune's benchmark asks for: both then
     * measure memory rather than page walks. */
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

/* First touch with the kernels' own static schedule: each thread's pages land on its node. */
static void first_touch(double *a, double *b, double *c, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        a[i] = pattern(i);
        b[i] = pattern(i);
        c[i] = pattern(i);
    }
}

static double read_kernel(const double *a, size_t n) {
    double sum = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : sum)
    for (size_t i = 0; i < n; i++) sum += a[i];
    return sum;
}

static void copy_kernel(const double *a, double *b, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) b[i] = a[i];
}

static void triad_kernel(double *a, const double *b, const double *c, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = b[i] + triad_scalar * c[i];
}

/* Runs one kernel once; returns 0 if its result is right (read: if it summed read_expected). */
static int run(const char *kernel, double *a, double *b, double *c, size_t n, double read_expected) {
    if (strcmp(kernel, "read") == 0) return read_kernel(a, n) == read_expected ? 0 : 1;
    if (strcmp(kernel, "copy") == 0) {
        copy_kernel(a, b, n);
        return 0;
    }
    triad_kernel(c, b, a, n); /* writes c, keeping a intact for read and copy */
    return 0;
}

static int verify_arrays(const double *a, const double *b, const double *c, size_t n, int ran_triad) {
    for (size_t i = 0; i < n; i++) {
        const double expected_c = ran_triad ? pattern(i) * (1 + triad_scalar) : pattern(i);
        if (a[i] != pattern(i) || b[i] != pattern(i) || c[i] != expected_c) {
            fprintf(stderr, "stream_ref: wrong value at element %zu\n", i);
            return 1;
        }
    }
    return 0;
}

static int compare_doubles(const void *x, const void *y) {
    const double dx = *(const double *)x, dy = *(const double *)y;
    return (dx > dy) - (dx < dy);
}

static double bytes_per_element(const char *kernel) {
    return strcmp(kernel, "read") == 0 ? 8 : strcmp(kernel, "copy") == 0 ? 16 : 24;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: stream_ref ARRAY_BYTES REPEATS KERNEL...\n");
        return 2;
    }
    const size_t n = strtoull(argv[1], NULL, 10) / sizeof(double);
    const int repeats = atoi(argv[2]);
    if (n == 0 || repeats < 1) {
        fprintf(stderr, "stream_ref: ARRAY_BYTES and REPEATS must be positive\n");
        return 2;
    }
    for (int k = 3; k < argc; k++) {
        if (strcmp(argv[k], "read") && strcmp(argv[k], "copy") && strcmp(argv[k], "triad")) {
            fprintf(stderr, "stream_ref: unknown kernel '%s'\n", argv[k]);
            return 2;
        }
    }
    double *a = allocate(n), *b = allocate(n), *c = allocate(n);
    double *gbps = malloc(sizeof(double) * (size_t)repeats);
    first_touch(a, b, c, n);
    double read_expected = 0;
    for (size_t i = 0; i < n; i++) read_expected += pattern(i);

    int failed = 0, ran_triad = 0;
    for (int k = 3; k < argc; k++) {
        const char *kernel = argv[k];
        failed |= run(kernel, a, b, c, n, read_expected); /* warm-up */
        for (int r = 0; r < repeats; r++) {
            const double start = omp_get_wtime();
            failed |= run(kernel, a, b, c, n, read_expected);
            gbps[r] = bytes_per_element(kernel) * (double)n / (omp_get_wtime() - start) / 1e9;
        }
        ran_triad |= strcmp(kernel, "triad") == 0;
        printf("%s", kernel);
        for (int r = 0; r < repeats; r++) printf(" %.4f", gbps[r]);
        printf("\n");
        qsort(gbps, (size_t)repeats, sizeof(double), compare_doubles);
        fprintf(stderr, "%-5s best %.2f GB/s, median %.2f GB/s (%d threads, %zu MiB per array)\n", kernel,
                gbps[repeats - 1], (gbps[(repeats - 1) / 2] + gbps[repeats / 2]) / 2, omp_get_max_threads(),
                (n * sizeof(double)) >> 20);
    }
    failed |= verify_arrays(a, b, c, n, ran_triad);
    free(gbps);
    free(a);
    free(b);
    free(c);
    return failed ? 1 : 0;
}
