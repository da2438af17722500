"""Reading a machine: `Root`, the only thing in numatune that opens files of the machine, and
pure parsers from what the kernel writes in /sys and /proc to plain values.

A root is a directory (by default the live "/") or a capture made by `hwloc-gather-topology`
(a tarball read in place: its members are indexed in memory, nothing is extracted to disk).
Paths given to a root are relative to it ("sys/devices/system/node/node0/cpulist").

The parsers never touch files; they take text, tolerate what real kernels write (NUL bytes,
trailing newlines, empty lists, stray whitespace) and raise ValueError on anything else.
"""
from __future__ import annotations

import lzma
import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .errors import ProbeError

TARBALL_SUFFIXES = (".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar")
_COMPRESSED_MAGIC = (b"BZh", b"\x1f\x8b", b"\xfd7zXZ\x00")
_SYMLINK_HOPS = 40
# Bounds that no real machine reaches (Linux's NR_CPUS is at most 8192, a /proc/cpuinfo of that many
# CPUs about 12 MB): a list like "0-4294967295" or a capture member of a terabyte is refused
# instead of filling the memory.
MAX_CPU_NUMBER = (1 << 16) - 1
MAX_MEMBER_BYTES = 64 << 20
MAX_CAPTURE_BYTES = 1 << 30


# ---------------------------------------------------------------------------------------------
# Roots


class Root:
    """Where the machine's /sys and /proc are read from. Open one with `Root.open(spec)`."""

    @staticmethod
    def open(spec: str = "/") -> "Root":
        """A directory, or an hwloc capture tarball; ProbeError (one line) when neither is usable."""
        path = Path(spec)
        if path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                raise ProbeError(f"{spec}: directory is not readable")
            return DirectoryRoot(spec)
        if not path.exists():
            raise ProbeError(f"{spec}: no such directory or capture file")
        return CaptureRoot(spec)

    spec: str

    @property
    def is_live(self) -> bool:
        """True only when this root is the running machine's own "/"."""
        return False

    def describe(self) -> str:
        raise NotImplementedError

    def path_of(self, rel: str) -> str:
        """How a file of this root is named to people: "/proc/self/status" on the live machine,
        "capture.tar.bz2/proc/self/status" in a capture, never a bare path that reads as live."""
        return posixpath.join(self.spec, _clean_rel(rel))

    def read_text(self, rel: str) -> Optional[str]:
        """The file's text, or None when it is missing or cannot be read."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def listdir(self, rel: str) -> list[str]:
        """Sorted names in a directory; [] when it is missing or not a directory."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def names_live_machine(spec: str) -> bool:
    """Whether a root given as `spec` is the running machine's own "/" (and not a captured tree)."""
    return os.path.realpath(spec) == "/"


def _clean_rel(rel: str) -> str:
    """A root-relative path without "." or ".." parts, never leaving the root ("" is the root)."""
    normal = posixpath.normpath("/" + rel.lstrip("/")).lstrip("/")
    return "" if normal in (".", "") else normal


class DirectoryRoot(Root):
    """A directory tree laid out like "/" (the live machine, or an unpacked capture)."""

    def __init__(self, spec: str):
        self.spec = spec
        self._base = Path(spec)

    @property
    def is_live(self) -> bool:
        return names_live_machine(self.spec)

    def describe(self) -> str:
        return "the live machine (/)" if self.is_live else f"directory {self.spec}"

    def _path(self, rel: str) -> Path:
        return self._base / _clean_rel(rel)

    def read_text(self, rel: str) -> Optional[str]:
        try:
            with open(self._path(rel), "rb") as handle:
                return handle.read().decode("utf-8", errors="replace")
        except (OSError, ValueError):
            # sysfs answers some reads with EIO/EINVAL/EACCES; to the probe that is "unknown".
            return None

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._path(rel))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(rel)))
        except OSError:
            return []


class CaptureRoot(Root):
    """An `hwloc-gather-topology` tarball; its one top-level directory stands for "/"."""

    def __init__(self, spec: str):
        self.spec = spec
        self._files: dict[str, bytes] = {}
        self._links: dict[str, str] = {}          # symlink path -> resolved target path
        self._dirs: dict[str, set[str]] = {"": set()}
        self._top = ""
        self._load()

    def describe(self) -> str:
        return f"capture {self.spec} (top directory {self._top!r})"

    def _load(self) -> None:
        members = self._read_members()
        tops = sorted({name.split("/", 1)[0] for name, _ in members})
        if not tops:
            raise ProbeError(f"{self.spec}: the tar archive holds no files")
        if len(tops) > 1:
            shown = ", ".join(tops[:5]) + (", ..." if len(tops) > 5 else "")
            raise ProbeError(f"{self.spec}: expected one top-level directory in the archive, "
                             f"found {len(tops)} ({shown})")
        self._top = tops[0]
        for name, member_or_data in members:
            rel = name.split("/", 1)[1] if "/" in name else ""
            self._index(rel, member_or_data)

    def _read_members(self) -> list[tuple[str, object]]:
        """(normalised name, bytes | TarInfo) for every member, read in one sequential pass.

        Compressed tar streams cannot seek backwards cheaply, so file contents are taken while
        walking the archive, never later.
        """
        members: list[tuple[str, object]] = []
        total = 0
        try:
            with tarfile.open(self.spec, mode="r:*") as archive:
                for member in archive:
                    name = _clean_rel(member.name)
                    if not name:
                        continue
                    if member.isfile():
                        total += member.size
                        self._check_size(member, total)
                        handle = archive.extractfile(member)
                        members.append((name, handle.read() if handle else b""))
                    else:
                        members.append((name, member))
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
            raise ProbeError(f"{self.spec}: {self._what_is_wrong(exc)}") from None
        return members

    def _check_size(self, member: tarfile.TarInfo, total: int) -> None:
        if member.size > MAX_MEMBER_BYTES:
            raise ProbeError(f"{self.spec}: member {member.name} holds {member.size} bytes, more than any "
                             f"file of /sys or /proc ({MAX_MEMBER_BYTES >> 20} MiB): not a topology capture")
        if total > MAX_CAPTURE_BYTES:
            raise ProbeError(f"{self.spec}: the members hold more than {MAX_CAPTURE_BYTES >> 30} GiB: "
                             "not a topology capture")

    def _what_is_wrong(self, exc: Exception) -> str:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, PermissionError):
            return f"cannot read the file ({reason})"
        try:
            with open(self.spec, "rb") as handle:
                head = handle.read(8)
        except OSError as err:
            return f"cannot read the file ({' '.join(str(err).split())})"
        compressed = any(head.startswith(magic) for magic in _COMPRESSED_MAGIC)
        if compressed or self.spec.endswith(TARBALL_SUFFIXES):
            return f"corrupt or truncated tar archive ({reason})"
        return ("not a directory nor a tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz) "
                "as written by hwloc-gather-topology")

    def _index(self, rel: str, member_or_data: object) -> None:
        parent, _, leaf = rel.rpartition("/")
        self._add_dir(parent)
        if leaf:
            self._dirs[parent].add(leaf)
        if isinstance(member_or_data, bytes):
            self._files[rel] = member_or_data
        elif member_or_data.issym():
            target = member_or_data.linkname
            base = "" if target.startswith("/") else parent
            self._links[rel] = _clean_rel(posixpath.join(base, target))
        elif member_or_data.islnk():
            # hard links name their target by its member name, top directory included
            self._links[rel] = _clean_rel(member_or_data.linkname).split("/", 1)[-1]
        elif member_or_data.isdir():
            self._add_dir(rel)

    def _add_dir(self, rel: str) -> None:
        if rel in self._dirs:
            return
        self._dirs[rel] = set()
        parent, _, leaf = rel.rpartition("/")
        self._add_dir(parent)
        self._dirs[parent].add(leaf)

    def _resolve(self, rel: str) -> Optional[str]:
        """Follows symlinks component by component (sysfs links directories, e.g. cpufreq)."""
        path = _clean_rel(rel)
        for _ in range(_SYMLINK_HOPS):
            parts = path.split("/") if path else []
            for i in range(1, len(parts) + 1):
                prefix = "/".join(parts[:i])
                if prefix in self._links:
                    rest = "/".join(parts[i:])
                    path = _clean_rel(posixpath.join(self._links[prefix], rest))
                    break
            else:
                return path
        return None

    def read_text(self, rel: str) -> Optional[str]:
        path = self._resolve(rel)
        data = self._files.get(path) if path is not None else None
        return None if data is None else data.decode("utf-8", errors="replace")

    def exists(self, rel: str) -> bool:
        path = _clean_rel(rel)
        if path in self._links:
            return True
        path = self._resolve(path)
        return path is not None and (path in self._files or path in self._dirs)

    def listdir(self, rel: str) -> list[str]:
        path = self._resolve(rel)
        return sorted(self._dirs.get(path, ())) if path is not None else []


# ---------------------------------------------------------------------------------------------
# Parsers of single values


def _clean(text: str) -> str:
    """Text as the kernel meant it: some captures carry NUL padding; newlines end every file."""
    return text.replace("\x00", "").strip()


def parse_int(text: str) -> int:
    """"  42\\n" -> 42; accepts a sign and NUL padding."""
    return int(_clean(text))


def parse_cpulist(text: str) -> list[int]:
    """A kernel CPU or node list: "0-3,8" -> [0, 1, 2, 3, 8]; "" -> [].

    Also the kernel's grouped ranges "0-15:2/8" (the first 2 of every 8 in 0-15: 0,1,8,9).
    """
    cleaned = _clean(text)
    if not cleaned:
        return []
    result: set[int] = set()
    for item in cleaned.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?", item)
        if not match:
            raise ValueError(f"not a CPU list item: {item!r}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise ValueError(f"descending range in CPU list: {item!r}")
        if last > MAX_CPU_NUMBER:
            raise ValueError(f"CPU or node number beyond {MAX_CPU_NUMBER} in CPU list: {item!r}")
        used, group = (int(match.group(3)), int(match.group(4))) if match.group(3) else (1, 1)
        if group == 0 or used == 0 or used > group:
            raise ValueError(f"bad group in CPU list: {item!r}")
        result.update(n for n in range(first, last + 1) if (n - first) % group < used)
    return sorted(result)


def parse_cpumask(text: str) -> list[int]:
    """A kernel hex mask, 32-bit groups separated by commas: "00000000,0000000f" -> [0, 1, 2, 3]."""
    cleaned = _clean(text).replace(",", "")
    if not cleaned:
        return []
    if not re.fullmatch(r"(0x)?[0-9a-fA-F]+", cleaned):
        raise ValueError(f"not a CPU mask: {_clean(text)!r}")
    value = int(cleaned, 16)
    if value.bit_length() > MAX_CPU_NUMBER + 1:
        raise ValueError(f"CPU mask with bits beyond {MAX_CPU_NUMBER}")
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A cache or page size: "32K" -> 32768; "1M", "512", "64 kB", "2048KiB" also work."""
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", _clean(text), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {_clean(text)!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def parse_bracketed_choice(text: str) -> str:
    """The active choice of a sysfs selector: "always madvise [never]" -> "never"."""
    match = re.search(r"\[([^\]]+)\]", _clean(text))
    if not match:
        raise ValueError(f"no [choice] in {_clean(text)!r}")
    return match.group(1)


def parse_distances(text: str) -> list[int]:
    """A node's row of the distance matrix: "10 20 20" -> [10, 20, 20]."""
    return [int(word) for word in _clean(text).split()]


# ---------------------------------------------------------------------------------------------
# Parsers of /proc files


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo or a node's meminfo -> {field: value}; "kB" values are given in bytes.

    Node files prefix every line with "Node N " ("Node 0 MemTotal:  16 kB"); the prefix is
    dropped so both forms yield the same keys. Fields without a unit (HugePages_Total) are counts.
    """
    values: dict[str, int] = {}
    for line in _clean(text).splitlines():
        match = re.fullmatch(r"\s*(?:Node\s+\d+\s+)?([^:\s]+):\s*(\d+)\s*(kB)?\s*", line)
        if match:
            scale = 1024 if match.group(3) else 1
            values[match.group(1)] = int(match.group(2)) * scale
    return values


@dataclass(frozen=True)
class ProcessLists:
    """What /proc/<pid>/status says a process may use; None when the field is absent."""
    cpus_allowed: Optional[tuple[int, ...]]
    mems_allowed: Optional[tuple[int, ...]]


def parse_status(text: str) -> ProcessLists:
    """/proc/self/status -> its Cpus_allowed_list and Mems_allowed_list."""
    fields = {}
    for line in _clean(text).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value

    def cpulist(key: str) -> Optional[tuple[int, ...]]:
        return tuple(parse_cpulist(fields[key])) if key in fields else None

    return ProcessLists(cpulist("Cpus_allowed_list"), cpulist("Mems_allowed_list"))


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo -> one {key: value} per record.

    A record starts at each "processor" key (ARM writes no blank line between processors) or
    after a blank line; keys outside processor records (s390's header, POWER's trailer) form
    records of their own.
    """
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in _clean(text).splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key:
            if not line.strip() and current:
                records.append(current)
                current = {}
            continue
        if key == "processor" and current:
            records.append(current)
            current = {}
        current[key] = value.strip()
    if current:
        records.append(current)
    return records


def parse_isolcpus(cmdline: str) -> Optional[list[int]]:
    """The CPUs of "isolcpus=" on a kernel command line, None when absent.

    Its value may start with flags ("isolcpus=nohz,domain,managed_irq,2-5"); the rest is a
    CPU list. When given several times, the last one counts, as in the kernel.
    """
    values = re.findall(r"(?:^|\s)isolcpus=(\S*)", _clean(cmdline))
    if not values:
        return None
    items = values[-1].split(",")
    while items and re.fullmatch(r"[a-z_]+", items[0]):
        items.pop(0)
    return parse_cpulist(",".join(items))


@dataclass(frozen=True)
class Mount:
    """One line of /proc/mounts."""
    source: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes spaces, tabs, newlines and backslashes as octal escapes ("\040").
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in _clean(text).splitlines():
        fields = line.split()
        if len(fields) >= 4:
            mounts.append(Mount(_unescape_mount_field(fields[0]), _unescape_mount_field(fields[1]),
                                fields[2], tuple(fields[3].split(","))))
    return mounts


@dataclass(frozen=True)
class CgroupMembership:
    """One line of /proc/self/cgroup: hierarchy 0 with no controllers is cgroup v2."""
    hierarchy: int
    controllers: tuple[str, ...]
    path: str


def parse_proc_cgroup(text: str) -> list[CgroupMembership]:
    """/proc/self/cgroup: "4:cpuset:/dummy", "2:cpu,cpuacct:/", "0::/user.slice"."""
    entries = []
    for line in _clean(text).splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3 and parts[0].isdigit():
            controllers = tuple(c for c in parts[1].split(",") if c)
            entries.append(CgroupMembership(int(parts[0]), controllers, parts[2] or "/"))
    return entries


@dataclass(frozen=True)
class CgroupHierarchy:
    """Where one cgroup controller's files are mounted, and how they are named there."""
    version: int          # 1 (cgroup v1 or the legacy cpuset filesystem) or 2 (unified)
    mountpoint: str       # as the machine saw it, e.g. "/sys/fs/cgroup/cpuset"
    file_prefix: str      # "cpuset." normally; "" for the legacy cpuset fs or "noprefix"


def cgroup_hierarchies(mounts: list[Mount], controller: str) -> list[CgroupHierarchy]:
    """Mounts that may hold `controller`'s files, unified hierarchies first.

    A cgroup2 mount holds the controller only if its cgroup.controllers lists it, which the
    caller checks; a v1 "cgroup" mount holds the controllers named in its options; the legacy
    "cpuset" filesystem holds cpuset with unprefixed file names ("cpus", "mems").
    """
    unified, legacy = [], []
    for mount in mounts:
        if mount.fstype == "cgroup2":
            unified.append(CgroupHierarchy(2, mount.mountpoint, f"{controller}."))
        elif mount.fstype == "cgroup" and controller in mount.options:
            prefix = "" if "noprefix" in mount.options else f"{controller}."
            legacy.append(CgroupHierarchy(1, mount.mountpoint, prefix))
        elif mount.fstype == "cpuset" and controller == "cpuset":
            legacy.append(CgroupHierarchy(1, mount.mountpoint, ""))
    return unified + legacy


def cgroup_path_of(entries: list[CgroupMembership], controller: str, version: int) -> Optional[str]:
    """The process's cgroup in a hierarchy of `version` holding `controller`, from /proc/self/cgroup."""
    for entry in entries:
        if version == 2 and entry.hierarchy == 0 and not entry.controllers:
            return entry.path
        if version == 1 and controller in entry.controllers:
            return entry.path
    return None


def parse_cpu_max(text: str) -> Optional[float]:
    """cgroup v2 cpu.max -> CPUs' worth of time: "200000 100000" -> 2.0; "max 100000" -> None."""
    words = _clean(text).split()
    if not words or len(words) > 2:
        raise ValueError(f"not a cpu.max value: {_clean(text)!r}")
    if words[0] == "max":
        return None
    period = int(words[1]) if len(words) == 2 else 100000
    if period <= 0:
        raise ValueError(f"cpu.max period must be positive: {_clean(text)!r}")
    return int(words[0]) / period


def parse_cfs_quota(quota_text: str, period_text: str) -> Optional[float]:
    """cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us -> CPUs' worth of time; -1 -> None."""
    quota, period = parse_int(quota_text), parse_int(period_text)
    if quota < 0:
        return None
    if period <= 0:
        raise ValueError(f"cpu.cfs_period_us must be positive, got {period}")
    return quota / period


# v1 writes "no limit" as the largest page-aligned counter (9223372036854771712 on 4K pages).
_UNLIMITED_BYTES = 1 << 62


def parse_memory_limit(text: str) -> Optional[int]:
    """cgroup v2 memory.max or v1 memory.limit_in_bytes -> bytes; None when unlimited."""
    cleaned = _clean(text)
    if cleaned == "max":
        return None
    value = int(cleaned)
    return None if value >= _UNLIMITED_BYTES else value


def format_cpulist(values: Iterable[int]) -> str:
    """The kernel's list syntax for CPU or node numbers: [0, 1, 2, 3, 8] → "0-3,8"."""
    ordered = sorted(set(values))
    runs: list[str] = []
    for value in ordered:
        if runs and value == last + 1:
            start = runs[-1].split("-")[0]
            runs[-1] = f"{start}-{value}"
        else:
            runs.append(str(value))
        last = value
    return ",".join(runs)
