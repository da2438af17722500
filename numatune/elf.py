"""Reads the shared libraries an ELF file needs (its DT_NEEDED entries), in pure Python.

Used to tell how an installed engine was built, e.g. whether ktransformers' `cpuinfer_ext`
extension links libnuma (built with USE_NUMA=1) — without running it or needing binutils.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .errors import NumatuneError

_SHT_DYNAMIC = 6
_DT_NEEDED = 1


def needed_libraries(path: Path) -> tuple[str, ...]:
    """DT_NEEDED names of an ELF shared object or executable, in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NumatuneError(f"{path}: cannot read ({exc.strerror})") from None
    if data[:4] != b"\x7fELF":
        raise NumatuneError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    try:
        return _needed(data, is64, endian)
    except (struct.error, IndexError, UnicodeDecodeError):
        raise NumatuneError(f"{path}: truncated or malformed ELF file") from None


def _needed(data: bytes, is64: bool, e: str) -> tuple[str, ...]:
    if is64:
        shoff, = struct.unpack_from(e + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(e + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x2E)
    sections = [_section(data, shoff + i * shentsize, is64, e) for i in range(shnum)]
    names: list[str] = []
    for kind, offset, size, link, entsize in sections:
        if kind != _SHT_DYNAMIC:
            continue
        strtab_offset = sections[link][1]
        entry = entsize or (16 if is64 else 8)
        fmt = e + ("qQ" if is64 else "iI")
        for pos in range(offset, offset + size, entry):
            tag, value = struct.unpack_from(fmt, data, pos)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                end = data.index(b"\0", strtab_offset + value)
                names.append(data[strtab_offset + value:end].decode())
    return tuple(names)


def _section(data: bytes, at: int, is64: bool, e: str) -> tuple[int, int, int, int, int]:
    """(type, file offset, size, link, entry size) of one section header."""
    if is64:
        _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack_from(e + "IIQQQQIIQQ", data, at)
    else:
        _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack_from(e + "IIIIIIIIII", data, at)
    return kind, offset, size, link, entsize
