"""The CLI in-process through main(argv), and once through the installed `numatune` command."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from numatune.cli import main
from treegen import hwloc_corpus, FakeMachine, seed_machine, write_tree

FIXTURES = hwloc_corpus()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_probe_json_of_a_capture(capsys):
    code, out, err = run(capsys, "probe", "--json", "--root", str(FIXTURES / "16amd64-8n2c.tar.bz2"))
    assert code == 0, err
    data = json.loads(out)
    assert data["schema_version"] == 1
    assert len(data["nodes"]) == 8 and data["pus"] == 16
    assert {"id", "cpus", "memory_total_bytes", "distances"} <= set(data["nodes"][0])
    for key in ("packages", "cores", "pus", "threads_per_core", "online_cpus"):
        assert key in data


def test_probe_human_view_shows_nodes_and_distances(capsys):
    code, out, _ = run(capsys, "probe", "--root", str(FIXTURES / "16amd64-4n4c-cgroup-distance-merge.tar.bz2"))
    assert code == 0
    assert "NUMA node 3" in out and "Node distances" in out


@pytest.mark.parametrize("argv, needle", [
    (["probe", "--root", "/nonexistent/capture"], "/nonexistent/capture"),
    (["audit", "--engine", "nonsense"], "--engine"),
    (["probe", "--threads", "3"], "--threads"),
    (["audit", "--model", "no-such-model"], "no-such-model"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_corrupt_tarball(capsys, tmp_path):
    bad = tmp_path / "capture.tar.bz2"
    bad.write_bytes(b"BZh91AY&SY this is not bzip2 data")
    code, _, err = run(capsys, "probe", "--root", str(bad))
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1


def test_unreadable_gguf(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    code, _, err = run(capsys, "audit", "--root", str(write_tree(tmp_path / "r", FakeMachine())),
                       "--model", str(bad))
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1


def test_audit_json_and_fail_on(capsys, tmp_path):
    root = str(write_tree(tmp_path / "r", seed_machine(numa_balancing=1)))
    code, out, _ = run(capsys, "audit", "--root", root, "--json", "--fail-on", "never")
    assert code == 0
    findings = json.loads(out)["findings"]
    assert "numa-balancing-on" in {f["id"] for f in findings}
    assert all({"id", "severity", "evidence", "explanation", "fix"} <= set(f) for f in findings)
    assert run(capsys, "audit", "--root", root, "--fail-on", "warning")[0] == 1
    assert run(capsys, "audit", "--root", root, "--fail-on", "error")[0] == 0


def test_audit_model_profile_on_seed(capsys, seed_root):
    root = str(seed_root)
    code, out, _ = run(capsys, "audit", "--root", root, "--model", "deepseek-r1:Q4_K_M",
                       "--engine", "llama.cpp", "--threads", "126", "--json")
    assert code == 1  # errors found, default --fail-on error
    found = {f["id"] for f in json.loads(out)["findings"]}
    assert {"engine-spans-nodes", "smt-counted-as-cores", "model-fits-one-node"} <= found


def test_installed_command_error_has_no_traceback(tmp_path, require):
    proc = subprocess.run([require("numatune"), "probe", "--root", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
