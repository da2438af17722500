/* A real OpenMP program for the launch tests of the multi-node suite, built on the host by
 * tests/multinode/guest.py (gcc -fopenmp) before a guest boots.
 *
 *   omp-threads REPORT
 *
 * Runs one parallel region with the team the environment asks for (OMP_NUM_THREADS, places,
 * binding), writes REPORT (atomically): the process id, then one line per thread with its
 * kernel thread id and the CPU it ran on. Then waits until stdin closes, so that the caller can
 * read /proc/PID/task/TID/status of the pool's threads, which libgomp keeps alive and bound. */
#define _GNU_SOURCE
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { MAX_THREADS = 1024 };

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: omp-threads REPORT\n");
        return 2;
    }
    static long tids[MAX_THREADS];
    static int cpus[MAX_THREADS];
    int team = 0;
#pragma omp parallel
    {
        int i = omp_get_thread_num();
        if (i < MAX_THREADS) {
            tids[i] = syscall(SYS_gettid);
            cpus[i] = sched_getcpu();
        }
#pragma omp single
        team = omp_get_num_threads();
    }
    if (team > MAX_THREADS) {
        fprintf(stderr, "omp-threads: %d threads, at most %d supported\n", team, MAX_THREADS);
        return 2;
    }
    char partial[4096];
    snprintf(partial, sizeof partial, "%s.tmp", argv[1]);
    FILE* out = fopen(partial, "w");
    if (out == NULL) {
        perror(partial);
        return 2;
    }
    fprintf(out, "%d\n", (int)getpid());
    for (int i = 0; i < team; ++i) fprintf(out, "%ld %d\n", tids[i], cpus[i]);
    if (fclose(out) != 0 || rename(partial, argv[1]) != 0) {
        perror(argv[1]);
        return 2;
    }
    char byte;
    while (read(0, &byte, 1) > 0) {
    }
    return 0;
}
