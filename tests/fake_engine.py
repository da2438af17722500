#!/usr/bin/env python3
"""A stand-in for an inference engine in the tests of external trials: a real process that
takes its thread count as llama.cpp (-t), ktransformers (--cpu_infer, one more than its workers)
or an OpenMP program (OMP_NUM_THREADS) takes it, and prints a decode rate that depends on it
in the format of the parser named by --format. It appends what it saw (argv, CPU affinity,
thread count) as one JSON line to --log, so that tests can check how it was placed.

--fail-at N / --silent-at N / --hang-at N: with N threads, exit 3 with an error on stderr, print
no rate, or sleep far past any budget. --allocate MIB: touch that much anonymous memory first
(the peak resident set a trial records), in a forked child with --allocate-in-child.

For one instance per node: --by-cpu FILE (JSON) gives each instance its own behaviour, keyed by
the lowest CPU it may run on: {"0": {"samples": [..], "allocate": MIB, "fail": true, "hang": true}};
the samples are printed as "decode: X tok/s" lines. --peers DIR:N writes DIR/<pid> at start and
waits (up to 30 s) until N such files exist, so that instances started one after the other never
all see each other. Such an instance logs a line as it starts (pid, start time, the kernel's view
of its placement: /proc/self/status Cpus_allowed_list and Mems_allowed_list, and its memory policy:
get_mempolicy(2) mode and nodes) and another once its peers are there (the same, with the peers
seen and the end time).
"""
import argparse
import ctypes
import json
import os
import sys
import time

MPOL_MODES = {0: "default", 1: "preferred", 2: "bind", 3: "interleave", 4: "local", 5: "preferred-many",
              6: "weighted-interleave"}
SYS_GET_MEMPOLICY = 239          # x86_64


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
    parser.add_argument("--by-cpu")
    parser.add_argument("--peers")
    args = parser.parse_args()
    if args.by_cpu:
        return instance(args)
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


def instance(args) -> int:
    """One instance of several: its behaviour from --by-cpu, its placement and peers logged."""
    behaviour = json.loads(open(args.by_cpu).read())[str(min(os.sched_getaffinity(0)))]
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    record = {"argv": sys.argv[1:], "pid": os.getpid(), "threads": args.t, "start": time.time(),
              "cpus_allowed": status["Cpus_allowed_list"].strip(), "mems_allowed": status["Mems_allowed_list"].strip(),
              "mempolicy": mempolicy()}
    log_line(args.log, record)          # at once: a test can find (and kill) a process it started
    record["peers_seen"] = wait_for_peers(args.peers) if args.peers else 0
    if behaviour.get("allocate"):
        allocate(behaviour["allocate"] << 20, False)
    log_line(args.log, dict(record, end=time.time()))
    if behaviour.get("fail"):
        print("loading model\nerror: failed to allocate 12 GiB on this node", file=sys.stderr)
        return 3
    if behaviour.get("hang"):
        time.sleep(3600)
    for sample in behaviour["samples"]:
        print(f"decode: {sample} tok/s")
    return 0


def log_line(path: str, record: dict) -> None:
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def wait_for_peers(spec: str) -> int:
    folder, count = spec.rsplit(":", 1)
    open(os.path.join(folder, str(os.getpid())), "w").close()
    for _ in range(300):
        seen = len(os.listdir(folder))
        if seen >= int(count):
            return seen
        time.sleep(0.1)
    return len(os.listdir(folder))


def mempolicy() -> list:
    """This thread's memory policy as get_mempolicy(2) reports it: [mode, [nodes]]."""
    mode, mask = ctypes.c_int(), (ctypes.c_ulong * 16)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_GET_MEMPOLICY, ctypes.byref(mode), mask, ctypes.c_ulong(16 * 64), None, ctypes.c_ulong(0)):
        raise OSError(ctypes.get_errno(), "get_mempolicy")
    nodes = [w * 64 + b for w in range(16) for b in range(64) if mask[w] >> b & 1]
    return [MPOL_MODES.get(mode.value & 0xff, str(mode.value)), nodes]


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
