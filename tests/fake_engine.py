#!/usr/bin/env python3
"""A stand-in for an inference engine in the tests of external trials: a real process that
takes its thread count as llama.cpp (-t), ktransformers (--cpu_infer, one more than its workers)
or an OpenMP program (OMP_NUM_THREADS) takes it, and prints a decode rate that depends on it
in the format of the parser named by --format. It appends what it saw (argv, CPU affinity,
thread count) as one JSON line to --log, so that tests can check how it was placed.

--fail-at N / --silent-at N / --hang-at N: with N threads, exit 3 with an error on stderr, print
no rate, or sleep far past any budget. --allocate MIB: touch that much anonymous memory first
(the peak resident set a trial records), in a forked child with --allocate-in-child.
"""
import argparse
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-t", type=int)
    parser.add_argument("-tb", type=int)
    parser.add_argument("-m")
    parser.add_argument("--cpu_infer", type=int)
    parser.add_argument("--numa")
    parser.add_argument("--format", default="llama-timings")
    parser.add_argument("--log")
    parser.add_argument("--fail-at", type=int, default=-1)
    parser.add_argument("--silent-at", type=int, default=-1)
    parser.add_argument("--hang-at", type=int, default=-1)
    parser.add_argument("--allocate", type=int, default=0)
    parser.add_argument("--allocate-in-child", action="store_true")
    args = parser.parse_args()
    if args.allocate:
        allocate(args.allocate << 20, args.allocate_in_child)
    threads = args.t or (args.cpu_infer - 1 if args.cpu_infer else None) or int(os.environ.get("OMP_NUM_THREADS", "0"))
    if args.log:
        with open(args.log, "a") as log:
            log.write(json.dumps({"argv": sys.argv[1:], "threads": threads,
                                  "cpus": sorted(os.sched_getaffinity(0))}) + "\n")
    if threads == args.fail_at:
        print("loading model\nerror: failed to allocate 12 GiB on node 0", file=sys.stderr)
        return 3
    if threads == args.hang_at:
        time.sleep(3600)
    if threads == args.silent_at:
        print("loaded", file=sys.stderr)
        return 0
    rate = 40.0 * threads + (time.monotonic_ns() % 7) / 100    # grows with threads; a little noise
    if args.format == "llama-timings":
        print(f"llama_perf_context_print: prompt eval time =      50.00 ms /     8 tokens (    6.25 ms per token,   "
              f"160.00 tokens per second)", file=sys.stderr)
        print(f"llama_perf_context_print:        eval time =    1000.00 ms /    63 runs   (   15.87 ms per token,   "
              f"{rate:8.2f} tokens per second)", file=sys.stderr)
    elif args.format == "ktransformers":
        print(f"prompt eval rate:     {rate * 5} tokens/s\neval count:           64 token(s)\n"
              f"eval rate:            {rate} tokens/s")
    elif args.format == "custom":
        print(f"decode: {rate:.3f} tok/s")
    return 0


def allocate(size: int, in_child: bool) -> None:
    """Writes every page of `size` bytes of anonymous memory (resident until freed)."""
    if in_child:
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            return
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    if in_child:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
