#!/usr/bin/env python3
"""Boots Linux guests with given NUMA layouts and runs the multi-node pytest suite inside them.

    python tests/multinode/guest.py [--layout A|B|C|all ...] [--jobs N] [--out DIR] [-- PYTEST ARGS...]

One boot per layout runs that layout's test modules (layouts.py; marker `multinode`), two
layouts at a time by default. The guest (virtme-ng on QEMU's TCG emulator: nested KVM hangs
on these hosts) sees the host's filesystem read-only at the same paths, runs the same Python
and the installed numatune, and writes only under --out: pytest's temporary directory, its
JUnit report, the console log (host timestamps) and the exit status; --out/summary.json has
each layout's counts and times.

Exit status: the guest pytest's own (0 when every layout passed; the first failing one's
otherwise), 3 when a guest could not be started or did not report (missing tools, no kernel,
a boot that hung, a guest killed by the time limit), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from layouts import ENV, LAYOUTS, MODELS_ENV, Layout  # noqa: E402

EXIT_GUEST = 3
DEFAULT_OUT = "/tmp/numatune-multinode"
GUEST_STARTED = "guest: "     # the guest script's first line: the kernel has booted

# Models the guest tests load, made on the host before boot (numpy in the emulated guest is
# about a hundred times slower). "tiny": ~3 MiB, for placement and outputs; "wide": ~102 MiB,
# 34 MiB per tensor (17 huge pages: the engine asks for transparent huge pages, which
# interleave whole), so an interleaved copy can be checked for evenness on up to four nodes,
# and one copy does not fit a node the audit's memory hog has filled (a 26 MiB model did: the
# kernel keeps ~29 MiB free on a 512 MiB node by reclaiming).
MODELS = {
    "tiny": dict(hidden=256, intermediate=512, experts=8, top_k=2, layers=1),
    "wide": dict(hidden=1024, intermediate=1024, experts=32, top_k=2, layers=1),
}


def log(message: str) -> None:
    print(f"[multinode] {message}", file=sys.stderr, flush=True)


def find_kernel(explicit: str | None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.R_OK) else None

    def version_key(path: str):
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", os.path.basename(path))]

    kernels = sorted((k for k in glob.glob("/boot/vmlinuz-*") if os.access(k, os.R_OK)), key=version_key)
    return kernels[-1] if kernels else None


def missing_tools(kernel: str | None) -> list[str]:
    missing = []
    if shutil.which("vng") is None:
        missing.append("vng (pip install virtme-ng)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (apt-get install qemu-system-x86)")
    if not os.path.exists("/bin/busybox") and shutil.which("busybox") is None:
        missing.append("busybox (apt-get install busybox-static)")
    if kernel is None:
        missing.append("a readable kernel image in /boot (apt-get install linux-image-amd64)")
    for tool, package in (("numactl", "numactl"), ("lstopo-no-graphics", "hwloc"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def portable_llama_bench() -> str | None:
    """The llama-bench built for machines without the host's ISA (the guests have AVX2 at most),
    if tools/build-llama-bench.sh --portable has built it (ci.sh does)."""
    found = subprocess.run(["bash", str(REPO / "tools" / "build-llama-bench.sh"), "--portable", "--cached-only"],
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def make_fixtures(directory: Path) -> None:
    """Writes the guest tests' GGUF files with the host's numatune (about a second) — the tiny
    shape also as a complete model llama.cpp decodes — links the portable llama-bench when it is
    built, and builds the OpenMP program of the launch tests (compiling in the emulated guest
    would take long)."""
    from numatune.fullmodel import synthesize_complete
    from numatune.synth import PRESETS, synthesize
    directory.mkdir(parents=True, exist_ok=True)
    for name, shape in MODELS.items():
        synthesize(directory / f"{name}-q8_0.gguf", dataclasses.replace(PRESETS["default"], **shape), "Q8_0")
    synthesize_complete(directory / "tiny-complete-q8_0.gguf",
                        dataclasses.replace(PRESETS["default"], **MODELS["tiny"]), "Q8_0")
    link = directory / "llama-bench-portable"
    link.unlink(missing_ok=True)
    binary = portable_llama_bench()
    if binary:
        link.symlink_to(binary)
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    built = subprocess.run([compiler or "gcc", "-O1", "-Wall", "-fopenmp", str(HERE / "omp_threads.c"),
                            "-o", str(directory / "omp-threads")], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"gcc -fopenmp omp_threads.c failed: {built.stderr.strip()[-500:]}")


def pytest_command(python: str) -> list[str]:
    """The `pytest` script of this Python: unlike `python -m pytest` it never puts the current
    directory (the work tree, whose numatune/ has no compiled extension) on sys.path."""
    script = os.path.join(os.path.dirname(python), "pytest")
    return [script] if os.access(script, os.X_OK) else [python, "-m", "pytest"]


def guest_script(layout: Layout, run_dir: Path, models: Path, pytest_args: list[str],
                 pythonpath: str | None) -> str:
    python = os.path.realpath(sys.executable)
    env = {
        ENV: layout.to_json(),
        MODELS_ENV: str(models),
        "PYTHONSAFEPATH": "1",            # `python -m` must not put the work tree first on sys.path
        "PYTHONDONTWRITEBYTECODE": "1",   # the guest's view of the host is read-only
        "PYTHONUNBUFFERED": "1",
        # Loading hypothesis and pytest-benchmark costs seconds under the emulator; unused here.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        # py-cpuinfo's CPUID child takes ~13 s per probe under the emulator, for ISA flags that no
        # multi-node test reads; every `numatune` run in the guest inherits this.
        "NUMATUNE_QUICK_PROBE": "1",
        # Results and generated models go to the guest's writable directory, never to a saved
        # tuning result of the host that `recommend` and `launch` would follow.
        "NUMATUNE_DATA": str(run_dir / "tmp" / "data"),
        "NUMATUNE_CACHE": str(run_dir / "tmp" / "cache"),
        # TMPDIR stays the guest's own /tmp (in guest memory): pytest's capture files are
        # unlinked while open, which the 9p share of --out does not support.
        "PATH": f"{os.path.dirname(python)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "COLUMNS": "120",
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # -v: one line per test, so the console (read line by line) shows progress as it happens.
    command = pytest_command(python) + [
        "-p", "no:cacheprovider", "-o", "addopts=", "-v", "--durations=10",
        "--basetemp", str(run_dir / "tmp" / "pytest"), "--junitxml", str(run_dir / "junit.xml"),
        "-m", "multinode", "-rfEsxX"] + pytest_args
    if not any("::" in arg or os.path.exists(arg) for arg in pytest_args):
        command += layout.test_files(str(HERE))     # e.g. `-- -k interleave`: this layout's files
    lines = ["#!/bin/sh", "# written by tests/multinode/guest.py; runs inside the guest"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    lines += [f"echo '{GUEST_STARTED}booted, kernel up '\"$(cut -d' ' -f1 /proc/uptime)\"' s'",
              f"cd {shlex.quote(str(REPO))} || exit 98",
              # Automatic NUMA balancing (on in Debian's kernel) makes move_pages() report pages
              # that it has marked for hinting faults as absent, so the page-by-page checks would
              # see holes; test_guest_numa_balancing.py turns it on again to show exactly that.
              "echo 0 > /proc/sys/kernel/numa_balancing 2>/dev/null",
              f"echo 'guest: '\"$(nproc)\"' CPUs, '\"$(ls -d /sys/devices/system/node/node* | wc -l)\"' nodes'",
              " ".join(shlex.quote(c) for c in command),
              f"echo $? > {shlex.quote(str(run_dir / 'rc'))}"]
    return "\n".join(lines) + "\n"


def vng_command(layout: Layout, kernel: str, out: Path, script: Path, accel: str) -> list[str]:
    command = ["vng", "--run", kernel]
    if accel != "kvm":
        command.append("--disable-kvm")
    command += layout.vng_options()
    command += ["--rwdir", str(out), "--cwd", str(REPO), "--exec", f"sh {shlex.quote(str(script))}"]
    return command


@dataclasses.dataclass(frozen=True)
class GuestRun:
    status: int | None           # vng's exit status
    killed: bool                 # by the time limit
    seconds: float               # from starting vng to its exit
    boot_seconds: float | None   # from starting vng to the guest script's first line


def run_command(command: list[str], log_path: Path, timeout: float, echo: bool) -> GuestRun:
    """Runs the guest, its console copied to log_path with host timestamps (s since start)."""
    start = time.monotonic()
    booted: list[float] = []
    with open(log_path, "w", encoding="utf-8", errors="replace") as log_file:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                text = raw.decode("utf-8", "replace").replace("\r", "")
                now = time.monotonic() - start
                if not booted and text.startswith(GUEST_STARTED):
                    booted.append(now)
                log_file.write(f"[{now:6.1f}] {text}")
                log_file.flush()
                if echo:
                    sys.stdout.write(text)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            status = proc.wait(timeout=timeout)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)       # vng and its QEMU: the process group this call started
            status = proc.wait()
            killed = True
        reader.join(timeout=10)
    return GuestRun(status, killed, time.monotonic() - start, booted[0] if booted else None)


def junit_counts(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    for case in root.iter("testcase"):
        children = {child.tag: child for child in case}
        if "failure" in children:
            counts["failed"] += 1
        elif "error" in children:
            counts["errors"] += 1
        elif "skipped" in children:
            kind = children["skipped"].get("type", "")
            counts["xfailed" if "xfail" in kind else "skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run_layout(layout: Layout, kernel: str, out: Path, models: Path, pytest_args: list[str],
               timeout: float, pythonpath: str | None, accel: str, echo: bool) -> tuple[int, str, dict]:
    run_dir = out / layout.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "tmp").mkdir(parents=True)
    script = run_dir / "guest.sh"
    script.write_text(guest_script(layout, run_dir, models, pytest_args, pythonpath))
    command = vng_command(layout, kernel, out, script, accel)
    (run_dir / "command").write_text(" ".join(shlex.quote(c) for c in command) + "\n")
    log(f"layout {layout.name} ({layout.title}): booting")
    guest = run_command(command, run_dir / "console.log", timeout, echo)
    rc_file = run_dir / "rc"
    counts = junit_counts(run_dir / "junit.xml")
    tally = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k in ("passed", "failed")) if counts else "no report"
    record = {"layout": layout.name, "title": layout.title, "suites": list(layout.suites),
              "seconds": round(guest.seconds, 1),
              "boot_seconds": round(guest.boot_seconds, 1) if guest.boot_seconds is not None else None,
              "counts": counts}
    boot = f"boot {guest.boot_seconds:.0f} s, " if guest.boot_seconds is not None else ""
    if guest.killed:
        return EXIT_GUEST, (f"layout {layout.name}: guest killed after {timeout:.0f} s ({tally}); "
                            f"see {run_dir / 'console.log'}"), dict(record, rc=EXIT_GUEST)
    if not rc_file.exists():
        return EXIT_GUEST, (f"layout {layout.name}: the guest did not run the tests (vng exit status "
                            f"{guest.status}, {guest.seconds:.0f} s); see {run_dir / 'console.log'}"), \
            dict(record, rc=EXIT_GUEST)
    rc = int(rc_file.read_text().strip() or EXIT_GUEST)
    if rc == 5:
        rc = 1             # pytest's "no tests collected": a selection that ran nothing is a failure
    verdict = "ok" if rc == 0 else f"FAILED (pytest exit status {rc})"
    return rc, (f"layout {layout.name} ({layout.title}): {verdict}: {tally} in {guest.seconds:.0f} s "
                f"({boot}all in one boot)"), dict(record, rc=rc)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] [-- pytest args]")
    parser.add_argument("--layout", action="append", default=None,
                        help=f"layout to boot: {', '.join(LAYOUTS)} or all (repeatable; default all)")
    parser.add_argument("--out", default=os.environ.get("NUMATUNE_MULTINODE_OUT", DEFAULT_OUT),
                        help=f"where guests write logs, reports and temporary files (default {DEFAULT_OUT})")
    parser.add_argument("--kernel", help="kernel image to boot (default: the newest /boot/vmlinuz-*)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per guest before it is killed")
    parser.add_argument("--pythonpath", help="PYTHONPATH inside the guest, e.g. the work tree when it "
                        "holds a built extension (default: the installed numatune)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default=os.environ.get("NUMA_VM_ACCEL", "tcg"),
                        help="tcg (default; nested KVM hangs on these hosts) or kvm")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="guests booted at once (default: 2, or 1 on a 1-CPU host); a guest "
                        "runs Python on one emulated CPU most of the time, so two share two host CPUs well")
    parser.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    parser.add_argument("--list", action="store_true", help="list the layouts and exit")
    args = parser.parse_args(argv)

    if args.list:
        for layout in LAYOUTS.values():
            print(f"{layout.name}: {layout.title}")
        return 0
    names = args.layout or ["all"]
    chosen: list[Layout] = []
    for name in names:
        if name.lower() == "all":
            chosen += [layout for layout in LAYOUTS.values() if layout not in chosen]
        elif name.upper() in LAYOUTS:
            if LAYOUTS[name.upper()] not in chosen:
                chosen.append(LAYOUTS[name.upper()])
        else:
            parser.error(f"--layout: unknown layout '{name}' (expected {', '.join(LAYOUTS)} or all)")

    kernel = find_kernel(args.kernel)
    missing = missing_tools(kernel)
    if missing:
        log("cannot start a guest; missing: " + "; ".join(missing))
        return EXIT_GUEST
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    try:
        make_fixtures(models)
    except Exception as exc:  # noqa: BLE001 - reported, and the run fails
        log(f"cannot make the test models and programs: {type(exc).__name__}: {exc}")
        return EXIT_GUEST
    log(f"kernel {kernel}, accel {args.accel}, output in {out}")

    if args.jobs < 1:
        parser.error("--jobs: at least 1")
    jobs = min(args.jobs, len(chosen))
    echo = not args.quiet and jobs == 1        # several consoles at once would interleave

    def one(layout: Layout) -> tuple[int, str, dict]:
        rc, line, record = run_layout(layout, kernel, out, models, pytest_args, args.timeout,
                                      args.pythonpath, args.accel, echo)
        log(line)
        if rc != 0 and not echo:        # what failed, without the whole console
            tail = (out / layout.name / "console.log").read_text(errors="replace").splitlines()[-80:]
            print("\n".join(f"{layout.name}| {text}" for text in tail), file=sys.stderr, flush=True)
        return rc, line, record

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, chosen))
    total = time.monotonic() - start
    worst = 0
    for rc, _, _ in results:
        if rc != 0 and (worst == 0 or rc == EXIT_GUEST):
            worst = rc
    summary = [line for _, line, _ in results]
    records = [record for _, _, record in results]
    (out / "summary.json").write_text(json.dumps({"layouts": records, "seconds": round(total, 1), "jobs": jobs,
                                                  "kernel": kernel, "accel": args.accel}, indent=2) + "\n")
    print("\n".join(f"multinode {line}" for line in summary), flush=True)
    print(f"multinode: {len(chosen)} layout(s), {jobs} at a time, in {total:.0f} s; "
          f"summary in {out / 'summary.json'}", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
