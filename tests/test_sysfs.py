"""Root (a directory or a capture tarball) and the pure parsers of numatune.sysfs, on odd inputs."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from numatune.errors import NumatuneError, ProbeError
from numatune.sysfs import (CgroupHierarchy, CgroupMembership, Mount, ProcessLists, Root,
                            cgroup_hierarchies, cgroup_path_of, format_cpulist, parse_bracketed_choice,
                            parse_cfs_quota, parse_cpu_max, parse_cpuinfo, parse_cpulist,
                            parse_cpumask, parse_distances, parse_int, parse_isolcpus,
                            parse_memory_limit, parse_meminfo, parse_mounts, parse_proc_cgroup,
                            parse_size, parse_status)

# ---------------------------------------------------------------------------------------------
# CPU lists and masks


@pytest.mark.parametrize("text, cpus", [
    ("0-3,8", [0, 1, 2, 3, 8]),
    ("0-3,8\n", [0, 1, 2, 3, 8]),
    ("0-1\x00\x00\x00", [0, 1]),
    ("", []),
    ("\n", []),
    ("\x00", []),
    ("  5 \n", [5]),
    ("8,0-1,1", [0, 1, 8]),
    ("0-15:2/8", [0, 1, 8, 9]),
    ("4-11:1/4", [4, 8]),
    ("1023", [1023]),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "0-7:3/2", "0-7:0/2", "1,,2", "-1", "0-", "0-7:2"])
def test_parse_cpulist_rejects_what_the_kernel_never_writes(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


@pytest.mark.parametrize("cpus, text", [
    ([0, 1, 2, 3, 8], "0-3,8"), ([], ""), ([5], "5"), ([3, 1, 2, 2], "1-3"), ([0, 2, 4], "0,2,4"),
    (range(0, 256), "0-255"),
])
def test_format_cpulist_is_the_inverse_of_parse(cpus, text):
    assert format_cpulist(cpus) == text
    assert parse_cpulist(text) == sorted(set(cpus))


@pytest.mark.parametrize("text, cpus", [
    ("00000000,0000000f", [0, 1, 2, 3]),
    ("00000000,0000000f\n", [0, 1, 2, 3]),
    ("0000,00000000,00000003", [0, 1]),
    ("00000000,00000101", [0, 8]),
    ("ff,00000000", list(range(32, 40))),
    ("3f\x00", [0, 1, 2, 3, 4, 5]),
    ("00000000,00000000", []),
    ("0", []),
    ("", []),
    ("\x00\n", []),
])
def test_parse_cpumask(text, cpus):
    assert parse_cpumask(text) == cpus


@pytest.mark.parametrize("text", ["zz", "0f,,0g", "1 2"])
def test_parse_cpumask_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_cpumask(text)


# ---------------------------------------------------------------------------------------------
# Sizes, numbers, selectors


@pytest.mark.parametrize("text, size", [
    ("32K", 32 * 1024), ("32K\n", 32 * 1024), ("5118K", 5118 * 1024), ("1M", 1 << 20),
    ("2G", 2 << 30), ("512", 512), ("64 kB", 64 * 1024), ("2048KiB", 2 << 20), ("32k\x00", 32 * 1024),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "K", "12Q", "-1K", "1.5M"])
def test_parse_size_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_int_tolerates_padding_and_signs():
    assert parse_int(" 42\n\x00") == 42
    assert parse_int("-1\n") == -1
    with pytest.raises(ValueError):
        parse_int("")


@pytest.mark.parametrize("text, choice", [
    ("always madvise [never]\n", "never"),
    ("[always] madvise never", "always"),
    ("always defer defer+madvise [madvise] never\x00", "madvise"),
])
def test_parse_bracketed_choice(text, choice):
    assert parse_bracketed_choice(text) == choice


def test_parse_bracketed_choice_without_brackets():
    with pytest.raises(ValueError):
        parse_bracketed_choice("always madvise never")


def test_parse_distances():
    assert parse_distances("10 20 20\n\x00") == [10, 20, 20]
    assert parse_distances("") == []


# ---------------------------------------------------------------------------------------------
# /proc files


def test_parse_meminfo_system_and_node_forms():
    system = "MemTotal:       16384 kB\nMemFree:  1024 kB\nHugePages_Total:       4\nHugepagesize:    2048 kB\n"
    assert parse_meminfo(system) == {"MemTotal": 16384 * 1024, "MemFree": 1024 * 1024,
                                     "HugePages_Total": 4, "Hugepagesize": 2048 * 1024}
    node = "Node 12 MemTotal:       125508468 kB\nNode 12 MemFree:        67220216 kB\nNode 12 HugePages_Free:   0\n"
    assert parse_meminfo(node) == {"MemTotal": 125508468 * 1024, "MemFree": 67220216 * 1024,
                                   "HugePages_Free": 0}


@pytest.mark.parametrize("text", ["", "\n\n", "\x00", "garbage without colon\n", "MemTotal: lots kB\n"])
def test_parse_meminfo_odd_inputs(text):
    assert parse_meminfo(text) == {}


def test_parse_meminfo_huge_value_and_nul_tail():
    assert parse_meminfo("MemTotal:   400016779264 kB\n\x00\x00") == {"MemTotal": 409617181966336}


def test_parse_status():
    text = ("Name:\tpython\nCpus_allowed:\tff\nCpus_allowed_list:\t0-3,8\n"
            "Mems_allowed:\t00000000,00000003\nMems_allowed_list:\t0-1\n")
    assert parse_status(text) == ProcessLists((0, 1, 2, 3, 8), (0, 1))
    assert parse_status("Name:\tx\n") == ProcessLists(None, None)
    assert parse_status("") == ProcessLists(None, None)
    assert parse_status("Cpus_allowed_list:\t\nMems_allowed_list:\t0\n\x00") == ProcessLists((), (0,))


def test_parse_cpuinfo_x86_records():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2\n\n"
            "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2\n\n")
    records = parse_cpuinfo(text)
    assert [r["processor"] for r in records] == ["0", "1"]
    assert records[1]["flags"] == "fpu avx2"


def test_parse_cpuinfo_arm_without_blank_lines():
    text = ("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
            "processor\t: 1\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n")
    records = parse_cpuinfo(text)
    assert len(records) == 2 and records[1]["Features"] == "fp asimd sve"


def test_parse_cpuinfo_s390_header_and_nul_tail():
    text = ("vendor_id       : IBM/S390\n# processors    : 2\nfeatures\t: esan3 zarch\n"
            "processor 0: version = 00,  identification = 279F25\n\x00")
    records = parse_cpuinfo(text)
    assert records[0]["vendor_id"] == "IBM/S390" and records[0]["features"] == "esan3 zarch"
    assert parse_cpuinfo("") == [] and parse_cpuinfo("\n\n\x00") == []


@pytest.mark.parametrize("cmdline, cpus", [
    ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 isolcpus=2-5\n", [2, 3, 4, 5]),
    ("isolcpus=nohz,domain,managed_irq,2-3,8 quiet", [2, 3, 8]),
    ("isolcpus=1 isolcpus=4", [4]),
    ("ro quiet", None),
    ("notisolcpus=3", None),
    ("", None),
])
def test_parse_isolcpus(cmdline, cpus):
    assert parse_isolcpus(cmdline) == cpus


def test_parse_mounts_unescapes_and_skips_short_lines():
    text = ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate 0 0\n"
            "none /mnt/with\\040space tmpfs rw 0 0\n"
            "broken line\n\x00")
    mounts = parse_mounts(text)
    assert mounts == [Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", ("rw", "nosuid", "nsdelegate")),
                      Mount("none", "/mnt/with space", "tmpfs", ("rw",))]
    assert parse_mounts("") == []


def test_parse_proc_cgroup_v1_and_v2():
    text = "4:cpuset:/dummy\n2:cpu,cpuacct:/user.slice\n1:name=systemd:/x\n0::/user.slice/session-1.scope\n"
    entries = parse_proc_cgroup(text)
    assert entries[0] == CgroupMembership(4, ("cpuset",), "/dummy")
    assert entries[1].controllers == ("cpu", "cpuacct")
    assert entries[3] == CgroupMembership(0, (), "/user.slice/session-1.scope")
    assert cgroup_path_of(entries, "cpuset", 1) == "/dummy"
    assert cgroup_path_of(entries, "cpu", 1) == "/user.slice"
    assert cgroup_path_of(entries, "cpuset", 2) == "/user.slice/session-1.scope"
    assert cgroup_path_of(entries, "memory", 1) is None
    assert parse_proc_cgroup("") == [] and parse_proc_cgroup("nonsense\n") == []


def test_cgroup_hierarchies_order_and_file_names():
    mounts = parse_mounts(
        "cpuset /dev/cpuset cgroup rw,relatime,cpuset,noprefix 0 0\n"
        "cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n"
        "none /dev/legacy cpuset rw 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n")
    assert cgroup_hierarchies(mounts, "cpuset") == [
        CgroupHierarchy(2, "/sys/fs/cgroup/unified", "cpuset."),
        CgroupHierarchy(1, "/dev/cpuset", ""),
        CgroupHierarchy(1, "/sys/fs/cgroup/cpuset", "cpuset."),
        CgroupHierarchy(1, "/dev/legacy", ""),
    ]
    assert cgroup_hierarchies(mounts, "cpu") == [
        CgroupHierarchy(2, "/sys/fs/cgroup/unified", "cpu."),
        CgroupHierarchy(1, "/sys/fs/cgroup/cpu,cpuacct", "cpu."),
    ]


@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None), ("max", None), ("200000 100000", 2.0), ("50000 100000\n\x00", 0.5),
    ("150000", 1.5),
])
def test_parse_cpu_max(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize("text", ["", "a b c", "100 0", "lots 100000"])
def test_parse_cpu_max_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_cpu_max(text)


def test_parse_cfs_quota():
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("150000", "100000") == 1.5
    with pytest.raises(ValueError):
        parse_cfs_quota("100", "0")


@pytest.mark.parametrize("text, limit", [
    ("max\n", None), ("1073741824\n", 1 << 30), ("9223372036854771712", None), ("0", 0),
])
def test_parse_memory_limit(text, limit):
    assert parse_memory_limit(text) == limit


# ---------------------------------------------------------------------------------------------
# Roots


def _make_tree(base: Path) -> Path:
    """A tiny machine: two CPUs, cpu0's cpufreq linked as modern kernels do."""
    files = {
        "sys/devices/system/cpu/online": "0-1\n",
        "sys/devices/system/cpu/cpu0/topology/core_id": "0\n",
        "sys/devices/system/cpu/cpufreq/policy0/scaling_governor": "performance\n",
        "sys/devices/system/node/node0/distance": "10\x00\x00\n",
        "proc/cmdline": "ro quiet\n",
    }
    for rel, text in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (base / "sys/devices/system/cpu/cpu1").mkdir(parents=True)
    os.symlink("../cpufreq/policy0", base / "sys/devices/system/cpu/cpu0/cpufreq")
    os.symlink("../../node/node0", base / "sys/devices/system/cpu/cpu0/node0")
    return base


def _check_tree_root(root: Root) -> None:
    assert root.read_text("sys/devices/system/cpu/online") == "0-1\n"
    assert root.read_text("/sys/devices/system/cpu/online") == "0-1\n"
    assert root.read_text("sys/devices/system/node/node0/distance") == "10\x00\x00\n"
    assert root.read_text("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") == "performance\n"
    assert root.read_text("sys/devices/system/cpu/cpu0/node0/distance") == "10\x00\x00\n"
    assert root.read_text("sys/devices/system/cpu/missing") is None
    assert root.read_text("sys/devices/system/cpu") is None          # a directory is not text
    assert root.read_text("../../../../etc/hostname") is None        # cannot leave the root
    assert root.exists("sys/devices/system/cpu/cpu1")
    assert root.exists("sys/devices/system/cpu/cpu0/node0")
    assert not root.exists("sys/devices/system/cpu/cpu7")
    assert root.listdir("sys/devices/system/cpu") == ["cpu0", "cpu1", "cpufreq", "online"]
    assert root.listdir("sys/devices/system/cpu/cpu0") == ["cpufreq", "node0", "topology"]
    assert root.listdir("sys/devices/system/cpu/cpu0/cpufreq") == ["scaling_governor"]
    assert root.listdir("sys/devices/system/cpu/cpu1") == []
    assert root.listdir("nowhere") == []
    assert root.listdir("proc/cmdline") == []
    assert not root.is_live


def test_directory_root(tmp_path):
    base = _make_tree(tmp_path / "machine")
    root = Root.open(str(base))
    _check_tree_root(root)
    assert str(base) in root.describe()


@pytest.mark.parametrize("suffix, mode", [
    (".tar.bz2", "w:bz2"), (".tar.gz", "w:gz"), (".tar.xz", "w:xz"), (".tar", "w"),
])
def test_capture_root_reads_in_place(tmp_path, suffix, mode):
    tree = _make_tree(tmp_path / "tree")
    capture = tmp_path / f"somename{suffix}"
    with tarfile.open(capture, mode) as archive:
        archive.add(tree, arcname="other-top-name")
    root = Root.open(str(capture))
    _check_tree_root(root)
    assert not any(tmp_path.glob("other-top-name*"))                  # nothing extracted
    assert str(capture) in root.describe() and "other-top-name" in root.describe()


def test_capture_root_with_dot_slash_member_names(tmp_path):
    capture = tmp_path / "capture.tar.gz"
    with tarfile.open(capture, "w:gz") as archive:
        data = b"0-3\n"
        info = tarfile.TarInfo("./top/sys/devices/system/cpu/online")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    root = Root.open(str(capture))
    assert root.read_text("sys/devices/system/cpu/online") == "0-3\n"
    assert root.listdir("") == ["sys"]


def test_live_root_is_live():
    root = Root.open("/")
    assert root.is_live and "live" in root.describe()


def _one_line_probe_error(spec: str) -> str:
    with pytest.raises(ProbeError) as caught:
        Root.open(spec)
    message = str(caught.value)
    assert spec in message and "\n" not in message, message
    assert isinstance(caught.value, NumatuneError) and caught.value.exit_code == 2
    return message


def test_missing_root(tmp_path):
    assert "no such" in _one_line_probe_error(str(tmp_path / "missing"))


def test_file_that_is_not_a_tarball(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert "not a directory nor a tar archive" in _one_line_probe_error(str(notes))


def test_corrupt_compressed_tarball(tmp_path):
    bad = tmp_path / "capture.tar.bz2"
    bad.write_bytes(b"BZh91AY&SY this is not bzip2 data\n\nat all")
    assert "corrupt" in _one_line_probe_error(str(bad))


def test_truncated_tarball(tmp_path):
    tree = _make_tree(tmp_path / "tree")
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as archive:
        archive.add(tree, arcname="top")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "corrupt" in _one_line_probe_error(str(cut))


def test_tarball_with_two_top_directories(tmp_path):
    tree = _make_tree(tmp_path / "tree")
    capture = tmp_path / "two.tar"
    with tarfile.open(capture, "w") as archive:
        archive.add(tree / "sys", arcname="one/sys")
        archive.add(tree / "proc", arcname="two/proc")
    assert "one top-level directory" in _one_line_probe_error(str(capture))


def test_empty_tarball(tmp_path):
    capture = tmp_path / "empty.tar"
    tarfile.open(capture, "w").close()
    assert "no files" in _one_line_probe_error(str(capture))
