"""On which NUMA nodes a file's pages sit in the page cache (a memory-mapped model's weights).

A model that an engine maps (llama.cpp's default) is read from the page cache, and cached pages
stay on the node where they were first read, across runs: a NUMA-aware run then reads remotely
whatever an earlier run (or `cp`, or a checksum) pulled into another node (llama.cpp #1437 and
its `--numa` help). This module finds out where those pages are:

1. map the file read-only and ask `mincore` which pages are resident;
2. touch only the resident pages (no I/O: they are cached; `MADV_RANDOM` keeps readahead from
   pulling in others), which maps them into this process;
3. ask `move_pages` with no target nodes, which only reports each page's node.

And it can drop the file's pages from the cache (`posix_fadvise(POSIX_FADV_DONTNEED)`; pages
that another process has mapped, or that are dirty, stay).

These are system calls on the live machine (ctypes, so no rebuild of the C++ module); the probe's
root does not apply to them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import NumatuneError

# move_pages(2) has no wrapper in glibc before libnuma; its syscall number by architecture
_SYS_MOVE_PAGES = {"x86_64": 279, "aarch64": 239, "ppc64le": 301, "ppc64": 301, "s390x": 310, "riscv64": 239}
_MADV_RANDOM = 1
_CHUNK_PAGES = 1 << 16          # pages per mincore/move_pages call (256 MiB of 4 KiB pages)


@dataclass(frozen=True)
class PageCacheReport:
    path: str
    size_bytes: int
    page_bytes: int
    pages: int
    resident_pages: int
    pages_by_node: tuple[tuple[int, int], ...]     # node → resident pages found there
    unplaced_pages: int                             # resident per mincore, node not reported
    dropped: Optional[bool] = None                  # whether --drop was asked and done

    @property
    def resident_bytes(self) -> int:
        return self.resident_pages * self.page_bytes

    def bytes_by_node(self) -> dict[int, int]:
        return {node: pages * self.page_bytes for node, pages in self.pages_by_node}

    def to_json(self) -> dict:
        return {"schema_version": 1, "path": self.path, "size_bytes": self.size_bytes,
                "page_bytes": self.page_bytes, "pages": self.pages, "resident_pages": self.resident_pages,
                "resident_bytes": self.resident_bytes,
                "bytes_by_node": {str(n): b for n, b in self.bytes_by_node().items()},
                "unplaced_pages": self.unplaced_pages, "dropped": self.dropped}


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.syscall.restype = ctypes.c_long
    return libc


def _error(what: str, path: str) -> NumatuneError:
    code = ctypes.get_errno()
    return NumatuneError(f"{path}: {what} failed ({os.strerror(code) if code else 'unknown error'})")


def _open(path: str) -> tuple[int, int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NumatuneError(f"{path}: cannot open ({exc.strerror})") from None
    size = os.fstat(fd).st_size
    if not os.path.isfile(path):
        os.close(fd)
        raise NumatuneError(f"{path}: not a regular file")
    return fd, size


def _nodes_of(libc, addresses: "np.ndarray", path: str) -> "np.ndarray":
    """move_pages(0, n, pages, NULL, status, 0): status[i] is the node of page i or -errno."""
    number = _SYS_MOVE_PAGES.get(platform.machine())
    if number is None:
        raise NumatuneError(f"move_pages: no system call number known for {platform.machine()}")
    pages = np.ascontiguousarray(addresses, dtype=np.uintp)
    status = np.empty(len(pages), dtype=np.int32)
    rc = libc.syscall(ctypes.c_long(number), ctypes.c_long(0), ctypes.c_ulong(len(pages)),
                      ctypes.c_void_p(pages.ctypes.data), ctypes.c_void_p(None),
                      ctypes.c_void_p(status.ctypes.data), ctypes.c_int(0))
    if rc < 0:
        raise _error("move_pages", path)
    return status


def _touch(base: int, length: int, offsets: "np.ndarray") -> None:
    """Reads one byte of each given page, which maps the cached page without reading the disk;
    numpy's gather does it in C (a 400 GB model has a hundred million pages)."""
    memory = np.ctypeslib.as_array((ctypes.c_ubyte * length).from_address(base))
    int(memory[offsets].sum())


def page_cache_nodes(path: str | Path, drop: bool = False) -> PageCacheReport:
    """Where the file's cached pages are; with `drop`, then evicts them (clean, unmapped ones)."""
    path = str(path)
    libc = _libc()
    page = mmap.PAGESIZE
    fd, size = _open(path)
    try:
        pages = (size + page - 1) // page
        counts: dict[int, int] = {}
        resident = unplaced = 0
        if size:
            base = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if base in (None, ctypes.c_void_p(-1).value):
                raise _error("mmap", path)
            try:
                libc.madvise(base, size, _MADV_RANDOM)
                resident, unplaced = _scan(libc, base, size, page, pages, counts, path)
            finally:
                libc.munmap(base, size)
        dropped = None
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            dropped = True
    finally:
        os.close(fd)
    return PageCacheReport(path, size, page, pages, resident, tuple(sorted(counts.items())), unplaced, dropped)


def _scan(libc, base: int, size: int, page: int, pages: int, counts: dict, path: str) -> tuple[int, int]:
    resident = unplaced = 0
    for first in range(0, pages, _CHUNK_PAGES):
        count = min(_CHUNK_PAGES, pages - first)
        vector = np.zeros(count, dtype=np.uint8)
        start, length = base + first * page, min(count * page, size - first * page)
        if libc.mincore(start, length, vector.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte))) != 0:
            raise _error("mincore", path)
        cached = np.flatnonzero(vector & 1)
        if not len(cached):
            continue
        _touch(start, length, cached * page)
        status = _nodes_of(libc, start + cached * page, path)
        placed = status[status >= 0]
        for node, found in enumerate(np.bincount(placed)):
            if found:
                counts[node] = counts.get(node, 0) + int(found)
        unplaced += int(len(status) - len(placed))
        resident += int(len(cached))
    return resident, unplaced


def drop_command_for(path: str) -> str:
    """The shell command that evicts one file's pages (or, failing that, the whole page cache)."""
    return (f"numatune pagecache {path} --drop   (or: vmtouch -e {path}; "
            "or for everything: sync; echo 1 > /proc/sys/vm/drop_caches)")


def pagecache_command(path: str, drop: bool, as_json: bool) -> int:
    """`numatune pagecache FILE [--drop]`."""
    import json
    import sys

    from . import render
    before = page_cache_nodes(path, drop=drop)
    after = page_cache_nodes(path) if drop else None
    if as_json:
        data = before.to_json()
        if after is not None:
            data["after_drop"] = after.to_json()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        render.page_cache(before, after)
    return 0
