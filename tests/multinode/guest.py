#!/usr/bin/env python3
"""Boots a Linux guest with a given NUMA layout and runs the multi-node pytest suite inside it.

    python tests/multinode/guest.py [--layout A|B|C|all ...] [--out DIR] [-- PYTEST ARGS...]

One boot per layout runs every selected test (marker `multinode`, directory tests/multinode).
The guest (virtme-ng on QEMU's TCG emulator: nested KVM hangs on these hosts) sees the host's
filesystem read-only at the same paths, runs the same Python, and writes only under --out:
pytest's temporary directory, its JUnit report, the console log and the exit status.

Exit status: the guest pytest's own (0 when every layout passed; the first failing one's
otherwise), 3 when a guest could not be started or did not report (missing tools, no kernel,
a boot that hung, a guest killed by the time limit), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
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

# Models the guest tests load, made on the host before boot (numpy in the emulated guest is
# about a hundred times slower). "tiny": a few MiB, for placement and outputs; "wide": ~100 MiB,
# 50-odd 2 MiB huge pages, so that an interleaved copy can be checked for evenness even where
# transparent huge pages interleave whole 2 MiB pages (THP is "always" in Debian's kernel).
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
    for tool, package in (("numactl", "numactl"), ("lstopo-no-graphics", "hwloc")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def make_models(directory: Path) -> None:
    """Writes the guest tests' GGUF files with the host's numatune (about a second)."""
    from numatune.synth import PRESETS, synthesize
    directory.mkdir(parents=True, exist_ok=True)
    for name, shape in MODELS.items():
        synthesize(directory / f"{name}-q8_0.gguf", dataclasses.replace(PRESETS["default"], **shape), "Q8_0")


def guest_script(layout: Layout, run_dir: Path, models: Path, pytest_args: list[str],
                 pythonpath: str | None) -> str:
    python = os.path.realpath(sys.executable)
    env = {
        ENV: layout.to_json(),
        MODELS_ENV: str(models),
        "PYTHONSAFEPATH": "1",            # `python -m` must not put the work tree first on sys.path
        "PYTHONDONTWRITEBYTECODE": "1",   # the guest's view of the host is read-only
        "PYTHONUNBUFFERED": "1",
        # TMPDIR stays the guest's own /tmp (in guest memory): pytest's capture files are
        # unlinked while open, which the 9p share of --out does not support.
        "PATH": f"{os.path.dirname(python)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "COLUMNS": "120",
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
               "--basetemp", str(run_dir / "tmp" / "pytest"), "--junitxml", str(run_dir / "junit.xml"),
               "-m", "multinode", "-rfEsxX"] + pytest_args
    if not any("::" in arg or os.path.exists(arg) for arg in pytest_args):
        command.append(str(HERE))          # e.g. `-- -k interleave`: still only this directory
    lines = ["#!/bin/sh", "# written by tests/multinode/guest.py; runs inside the guest"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    lines += [f"cd {shlex.quote(str(REPO))} || exit 98",
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


def run_command(command: list[str], log_path: Path, timeout: float, echo: bool) -> tuple[int | None, bool]:
    """Runs the guest; returns (vng's exit status or None, whether the time limit killed it)."""
    with open(log_path, "w", encoding="utf-8", errors="replace") as log_file:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                text = raw.decode("utf-8", "replace").replace("\r", "")
                log_file.write(text)
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
    return status, killed


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
               timeout: float, pythonpath: str | None, accel: str, echo: bool) -> tuple[int, str]:
    run_dir = out / layout.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "tmp").mkdir(parents=True)
    script = run_dir / "guest.sh"
    script.write_text(guest_script(layout, run_dir, models, pytest_args, pythonpath))
    command = vng_command(layout, kernel, out, script, accel)
    (run_dir / "command").write_text(" ".join(shlex.quote(c) for c in command) + "\n")
    log(f"layout {layout.name} ({layout.title}): booting")
    start = time.monotonic()
    status, killed = run_command(command, run_dir / "console.log", timeout, echo)
    seconds = time.monotonic() - start
    rc_file = run_dir / "rc"
    counts = junit_counts(run_dir / "junit.xml")
    tally = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k in ("passed", "failed")) if counts else "no report"
    if killed:
        return EXIT_GUEST, (f"layout {layout.name}: guest killed after {timeout:.0f} s ({tally}); "
                            f"see {run_dir / 'console.log'}")
    if not rc_file.exists():
        return EXIT_GUEST, (f"layout {layout.name}: the guest did not run the tests (vng exit status "
                            f"{status}, {seconds:.0f} s); see {run_dir / 'console.log'}")
    rc = int(rc_file.read_text().strip() or EXIT_GUEST)
    verdict = "ok" if rc == 0 else f"FAILED (pytest exit status {rc})"
    return rc, f"layout {layout.name} ({layout.title}): {verdict}: {tally} in {seconds:.0f} s"


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
        make_models(models)
    except Exception as exc:  # noqa: BLE001 - reported, and the run fails
        log(f"cannot make the test models with the host's numatune: {type(exc).__name__}: {exc}")
        return EXIT_GUEST
    log(f"kernel {kernel}, accel {args.accel}, output in {out}")

    worst = 0
    summary = []
    for layout in chosen:
        rc, line = run_layout(layout, kernel, out, models, pytest_args, args.timeout,
                              args.pythonpath, args.accel, not args.quiet)
        summary.append(line)
        log(line)
        if rc != 0 and (worst == 0 or rc == EXIT_GUEST):
            worst = rc
    print("\n".join(f"multinode {line}" for line in summary), flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
