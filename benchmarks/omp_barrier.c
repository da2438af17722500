/* Cost of one OpenMP barrier (what ggml's CPU back end runs after every graph node when built with
 * GGML_OPENMP, as tools/build-llama-bench.sh builds it), on the threads OMP_NUM_THREADS gives.
 *
 *     cc -O2 -fopenmp benchmarks/omp_barrier.c -o /tmp/omp_barrier
 *     OMP_NUM_THREADS=2 OMP_PROC_BIND=true /tmp/omp_barrier [barriers per round] [rounds]
 *
 * Prints the median and the spread (half the interquartile range) of the time per barrier over
 * the rounds, in microseconds. Uses the libgomp of the compiler, as llama-bench does. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static int by_value(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    const int barriers = argc > 1 ? atoi(argv[1]) : 20000;
    const int rounds = argc > 2 ? atoi(argv[2]) : 9;
    if (barriers <= 0 || rounds <= 0 || rounds > 1000) {
        fprintf(stderr, "omp_barrier: barriers and rounds must be positive (rounds at most 1000)\n");
        return 2;
    }
    double per_barrier_us[1000];
    int threads = 1;
    for (int r = 0; r < rounds; ++r) {
        double start = 0, end = 0;
#pragma omp parallel
        {
#pragma omp single
            threads = omp_get_num_threads();
#pragma omp barrier
#pragma omp master
            start = omp_get_wtime();
            for (int i = 0; i < barriers; ++i) {
#pragma omp barrier
            }
#pragma omp master
            end = omp_get_wtime();
        }
        per_barrier_us[r] = (end - start) * 1e6 / barriers;
    }
    qsort(per_barrier_us, rounds, sizeof(double), by_value);
    const double spread = (per_barrier_us[(3 * rounds) / 4] - per_barrier_us[rounds / 4]) / 2;
    printf("%d threads: %.3f us per barrier (± %.3f, median of %d rounds of %d)\n", threads,
           per_barrier_us[rounds / 2], spread, rounds, barriers);
    return 0;
}
