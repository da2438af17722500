"""Reading a Root for the probe: `Reader` keeps the list of what could not be read.

Every probe module reads files through a `Reader`, never the Root directly for parsed values:
a missing file is None silently, an unparsable one is None and a note in `Topology.unknown`.
The proc/cpuinfo records are read here because the CPU list, the AMD compute-unit rule and
the ISA all use them.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Optional, TypeVar

from ..sysfs import Root, parse_cpuinfo

SYS_CPU = "sys/devices/system/cpu"

T = TypeVar("T")


class Reader:
    """A root plus the list of what could not be read from it."""

    def __init__(self, root: Root):
        self.root = root
        self.unknown: list[str] = []

    def note(self, message: str) -> None:
        self.unknown.append(message)

    def value(self, rel: str, parse: Callable[[str], T]) -> Optional[T]:
        """The parsed file; None when absent (silently) or unparsable (noted)."""
        text = self.root.read_text(rel)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.note(f"{rel}: cannot parse ({exc})")
            return None

    def first_value(self, rels: Iterable[str], parse: Callable[[str], T]) -> Optional[T]:
        for rel in rels:
            if self.root.exists(rel):
                return self.value(rel, parse)
        return None

    def numbered(self, rel: str, prefix: str) -> list[int]:
        """The N of entries named prefix+N in a directory, sorted."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)")
        return sorted(int(m.group(1)) for m in map(pattern.fullmatch, self.root.listdir(rel)) if m)


def strip_text(text: str) -> str:
    return text.replace("\x00", "").strip()


def cpuinfo_records(reader: Reader) -> list[dict[str, str]]:
    text = reader.root.read_text("proc/cpuinfo")
    return parse_cpuinfo(text) if text else []
