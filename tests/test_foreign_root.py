"""With --root, numatune reports the facts of that root only: nothing of the machine it runs on.

The host's own facts that could leak into a captured root's report are its PATH (numactl, lstopo),
its cgroup files and its /proc/self. The tests run `probe` and `audit` (human and --json) over
every capture twice, with a PATH holding a fake numactl and lstopo and with an empty PATH: the
outputs must not differ. Every file named as evidence must be named inside the root.
"""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from numatune.cli import main
from treegen import FakeMachine, hwloc_captures, write_tree

CAPTURES = sorted(hwloc_captures().glob("*.tar.bz2"))
COMMANDS = (("probe",), ("probe", "--json"), ("audit", "--fail-on", "never"),
            ("audit", "--fail-on", "never", "--json"))


def _path_with_fake_tools(directory: Path) -> Path:
    directory.mkdir()
    for tool in ("numactl", "lstopo", "lstopo-no-graphics", "hwloc-ls"):
        script = directory / tool
        script.write_text("#!/bin/sh\necho fake\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory


def _outputs(root: str, capsys) -> list[tuple[int, str, str]]:
    results = []
    for command in COMMANDS:
        code = main([*command, "--root", root])
        out, err = capsys.readouterr()
        results.append((code, out, err))
    return results


def _named_paths(where: str) -> list[str]:
    return [item for item in where.split(", ") if item.startswith("/")]


def test_every_capture_is_checked():
    assert len(CAPTURES) == 21


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name[: -len(".tar.bz2")])
def test_no_fact_of_the_live_machine_in_a_captured_root(capture, tmp_path, monkeypatch, capsys):
    root = str(capture)
    fake_tools = _path_with_fake_tools(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fake_tools))
    with_tools = _outputs(root, capsys)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert _outputs(root, capsys) == with_tools
    assert all(code == 0 for code, _, _ in with_tools), [err for _, _, err in with_tools]
    assert not any(str(fake_tools) in out for _, out, _ in with_tools)
    assert "not known (a captured root" in with_tools[0][1]

    probed = json.loads(with_tools[1][1])
    assert probed["tools"] == {"numactl": None, "lstopo": None}
    assert all(source.startswith(root + "/") for source in probed["allowed"]["sources"])
    audited = json.loads(with_tools[3][1])
    named = [path for finding in audited["findings"] for evidence in finding["evidence"]
             for path in _named_paths(evidence["where"])]
    assert all(path.startswith(root + "/") for path in named), named


def test_evidence_of_a_generated_root_names_its_cgroup_files(tmp_path, capsys):
    # a cpuset that hides a node: the audit's evidence names the tree's files, not /sys/fs/cgroup
    root = write_tree(tmp_path / "root", FakeMachine(cgroup_cpus="0-3", cgroup_mems="0", cpu_max="200000 100000"))
    code = main(["audit", "--json", "--fail-on", "never", "--root", str(root)])
    findings = json.loads(capsys.readouterr()[0])["findings"]
    assert code == 0
    named = [path for finding in findings for evidence in finding["evidence"]
             for path in _named_paths(evidence["where"])]
    assert f"{root}/sys/fs/cgroup/numatune.slice/cpuset.cpus.effective" in named
    assert f"{root}/proc/self/status" in named
    assert all(path.startswith(f"{root}/") for path in named), named


def test_bandwidth_of_a_captured_root_is_refused_up_front(capsys):
    capture = str(CAPTURES[0])
    code = main(["probe", "--bandwidth", "--root", capture])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "live machine only" in err and capture in err


def test_bandwidth_of_a_generated_root_is_refused_through_the_command(tmp_path):
    import subprocess
    root = write_tree(tmp_path / "root", FakeMachine())
    done = subprocess.run(["numatune", "probe", "--bandwidth", "--json", "--root", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("numatune: error: --bandwidth with --root")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
