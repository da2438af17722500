"""Progress of long work: a bar on stderr when it is a terminal (a pseudo-terminal here), nothing
at all on a pipe or with --json, and stdout the same either way."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios

import pytest

BAR = "━"      # rich's bar


def run(argv, tty: bool, tmp_path):
    """(exit status, stdout, stderr) of `numatune ARGV`; stderr on a 120-column pseudo-terminal if `tty`."""
    env = dict(os.environ, NUMATUNE_CACHE=str(tmp_path / "cache"), NUMATUNE_DATA=str(tmp_path / "data"),
               TERM="xterm-256color", COLUMNS="120")
    env.pop("NO_COLOR", None)
    if not tty:
        done = subprocess.run(["numatune", *argv], capture_output=True, text=True, env=env, timeout=300)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    child = subprocess.Popen(["numatune", *argv], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            child.kill()
            pytest.fail("no output and no end within 300 s")
        try:
            chunk = os.read(master, 65536)
        except OSError:                 # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = child.stdout.read().decode()
    child.stdout.close()
    return child.wait(timeout=60), out, seen.decode(errors="replace")


SYNTH = ["model", "synth", "--preset", "default", "--layers", "3", "--experts", "8", "--type", "Q8_0"]


def test_synth_shows_progress_on_a_terminal_only(tmp_path):
    code, out, err = run(SYNTH + ["--out", str(tmp_path / "a.gguf")], True, tmp_path)
    assert code == 0, err
    assert "synth" in err and BAR in err and "4/4" in err          # 3 layers + the write, counted
    assert out.startswith("wrote ") and BAR not in out
    code, piped_out, piped_err = run(SYNTH + ["--out", str(tmp_path / "b.gguf")], False, tmp_path)
    assert code == 0 and piped_err == "" and piped_out.replace("b.gguf", "a.gguf") == out


def test_bandwidth_json_on_a_terminal_draws_nothing(tmp_path):
    code, out, err = run(["probe", "--bandwidth", "--repeats", "1", "--json"], True, tmp_path)
    if code == 2:           # this shared host had too little free memory for the arrays just now
        assert err.count("\n") == 1 and err.startswith("numatune: error") and BAR not in err
        pytest.skip(f"bandwidth not measurable here now: {err.strip()}")
    assert code == 0 and err == "" and out.lstrip().startswith("{")


def test_bandwidth_counts_its_steps_for_the_bar():
    from numatune.bandwidth import measure_topology
    from numatune.sysfs import Root
    from numatune.topology import probe
    topology = probe(Root.open("/"))
    totals, steps = [], []
    measured = measure_topology(topology, repeats=1, kernels=("read",), curves=False,
                                on_start=totals.append, on_step=steps.append)
    assert totals == [len(measured.matrix.cells)] == [len(steps)]
    assert all(step.startswith("read: CPUs of node ") for step in steps)


def test_tune_draws_its_bar_on_a_terminal(tmp_path):
    code, _, _ = run(SYNTH + ["--out", str(tmp_path / "m.gguf")], False, tmp_path)
    assert code == 0
    code, out, err = run(["tune", "--model", str(tmp_path / "m.gguf"), "--budget", "2",
                          "--out", str(tmp_path / "r.json")], True, tmp_path)
    assert code == 0, err
    assert "tune" in err and BAR in err and "trials, stage" in err and "s left" in err
    assert out.startswith("search space:") and "trials, stage" not in out and "winner:" in out
