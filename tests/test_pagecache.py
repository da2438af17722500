"""Page-cache placement of a real file on this host: mincore + move_pages through ctypes, and
dropping the file's pages. Asserts page counts; of nodes, only that they exist."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pytest

import numatune

from numatune.cli import main
from numatune.errors import NumatuneError
from numatune.pagecache import page_cache_nodes

MIB = 1 << 20


def host_nodes() -> set[int]:
    base = Path("/sys/devices/system/node")
    return {int(p.name[4:]) for p in base.glob("node*") if p.name[4:].isdigit()} or {0}


def filesystem_of(path: Path) -> str:
    """The type of the longest mount point holding `path` (tmpfs keeps no separate page cache to drop)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and str(path).startswith(fields[1].rstrip("/") + "/") and len(fields[1]) >= len(best):
            best, kind = fields[1], fields[2]
    return kind


@pytest.fixture
def disk_dir(tmp_path):
    """A fresh folder on a file system with a page cache of its own: tmp_path, else one under
    /var/tmp (tmpfs pages are the file itself and cannot be dropped)."""
    if filesystem_of(tmp_path) != "tmpfs":
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="numatune-pagecache-", dir="/var/tmp"))
    try:
        assert filesystem_of(folder) != "tmpfs", "neither the temporary folder nor /var/tmp is on a disk"
        yield folder
    finally:
        shutil.rmtree(folder)


def written(tmp_path, size=16 * MIB) -> Path:
    path = tmp_path / "model.bin"
    with open(path, "wb") as out:
        out.write(os.urandom(size))
        out.flush()
        os.fsync(out.fileno())   # clean pages: DONTNEED can evict them
    path.read_bytes()            # and cached
    return path


def test_cached_pages_are_found_on_existing_nodes(tmp_path):
    path = written(tmp_path)
    report = page_cache_nodes(path)
    assert report.pages == 16 * MIB // report.page_bytes
    assert report.resident_pages == report.pages
    assert sum(p for _, p in report.pages_by_node) + report.unplaced_pages == report.resident_pages
    assert {node for node, _ in report.pages_by_node} <= host_nodes()
    assert report.dropped is None


def test_dropping_leaves_fewer_pages_resident(disk_dir):
    path = written(disk_dir)
    before = page_cache_nodes(path, drop=True)
    after = page_cache_nodes(path)
    assert before.dropped is True
    assert after.resident_pages < before.resident_pages


def test_reading_part_of_a_dropped_file_caches_about_that_part(disk_dir):
    path = written(disk_dir)
    page_cache_nodes(path, drop=True)
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)   # no readahead beyond what is read
        handle.read(MIB)
    report = page_cache_nodes(path)
    assert MIB // report.page_bytes <= report.resident_pages < report.pages


def test_an_empty_file_has_no_pages(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    report = page_cache_nodes(path)
    assert (report.pages, report.resident_pages, report.pages_by_node) == (0, 0, ())


@pytest.mark.parametrize("name, message", [("missing", "cannot open"), ("", "not a regular file")])
def test_bad_paths_are_one_line_errors(tmp_path, name, message):
    with pytest.raises(NumatuneError, match=message):
        page_cache_nodes(tmp_path / name if name else tmp_path)


def validate(data: dict) -> None:
    schema = Path(numatune.__file__).parent / "schemas" / "pagecache-v1.schema.json"
    jsonschema.validate(data, json.loads(schema.read_text()))


def test_cli_json(tmp_path, capsys):
    path = written(tmp_path)
    assert main(["pagecache", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    validate(data)
    assert data["resident_pages"] == data["pages"] > 0
    assert sum(data["bytes_by_node"].values()) <= data["resident_bytes"]
    assert all(int(node) in host_nodes() for node in data["bytes_by_node"])


def test_cli_drop_json_has_the_state_after(tmp_path, capsys):
    path = written(tmp_path)
    assert main(["pagecache", str(path), "--drop", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    validate(data)
    assert data["dropped"] is True and data["after_drop"]["pages"] == data["pages"]


def test_cli_drop_and_human_output(tmp_path, capsys):
    path = written(tmp_path)
    assert main(["pagecache", str(path), "--drop"]) == 0
    out = capsys.readouterr().out
    assert "in the page cache" in out and "after dropping" in out


def test_cli_missing_file(tmp_path, capsys):
    assert main(["pagecache", str(tmp_path / "nope.gguf")]) == 2
    assert "cannot open" in capsys.readouterr().err
