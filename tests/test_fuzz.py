"""Hostile inputs, fuzzed with a fixed seed and a bounded number of cases: GGUF files (the reader
and the engine's loader), sysfs trees (the probe) and capture tarballs. Every case goes through
the command line in a child process (tests/fuzzcli.py runs them one after another through
numatune.cli.main; a few also as the real `numatune` command), so that a crash in C++ shows as a
signal, and must end in exit status 2 with one line of error — or, for inputs that stay valid
(the probe reads what it can and lists the rest as unknown), exit 0 with well-formed output.
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import tarfile
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import jsonschema
import pytest

from numatune.synth import PRESETS, synthesize
from treegen import seed_machine, write_tree

SEED = 20261207
HERE = Path(__file__).resolve().parent
PROBE_SCHEMA = json.loads((HERE.parent / "numatune" / "schemas" / "probe-v1.schema.json").read_text())


# ----- running cases ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    what: str                 # a description, shown when the case fails
    argv: tuple[str, ...]
    may_succeed: bool = False  # the input may still be valid: exit 0 is fine too


def run_all(cases: list[Case], tmp_path: Path, timeout: float = 240) -> list[dict]:
    """The results of all cases, run in one child; fails the test on a crash, naming the case."""
    (tmp_path / "cases.json").write_text(json.dumps([list(c.argv) for c in cases]))
    log = tmp_path / "log.jsonl"
    # NUMATUNE_QUICK_PROBE: the probe of "/" (bench) skips py-cpuinfo's second of ISA details. The
    # child imports numatune as the tests do (the installed package, or the caller's PYTHONPATH),
    # never the source tree beside it, which has no compiled extension in a clean clone.
    env = dict(os.environ, NUMATUNE_CACHE=str(tmp_path / "cache"), NUMATUNE_DATA=str(tmp_path / "data"),
               TMPDIR=str(private_tmp(tmp_path)), NUMATUNE_QUICK_PROBE="1")
    try:
        child = subprocess.run([sys.executable, str(HERE / "fuzzcli.py"), str(tmp_path / "cases.json"), str(log)],
                               capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))
        status, stderr = child.returncode, child.stderr
    except subprocess.TimeoutExpired as exc:
        status, stderr = f"timed out after {timeout:.0f} s", (exc.stderr or b"").decode(errors="replace")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    results = [line for line in lines if "case" in line]
    if status != 0:
        started = [line["start"] for line in lines if "start" in line]
        stopped = cases[started[-1]] if started else None
        pytest.fail(f"the CLI died ({status}) on: {stopped}\n{stderr[-3000:]}")
    assert len(results) == len(cases)
    return results


def private_tmp(tmp_path: Path) -> Path:
    path = tmp_path / "private-tmp"
    path.mkdir(exist_ok=True)
    return path


def check(cases: list[Case], results: list[dict]) -> None:
    problems = []
    for case, result in zip(cases, results):
        code, err = result["code"], result["stderr"]
        one_line = err.count("\n") == 1 and err.startswith("numatune: error") and "Traceback" not in err
        if code == 2 and one_line:
            continue
        if case.may_succeed and code == 0 and "Traceback" not in err:
            continue
        problems.append(f"{case.what}: exit {code}, stderr {err[-600:]!r}")
    assert not problems, f"{len(problems)} of {len(cases)} cases misbehaved:\n" + "\n".join(problems)


def run_command(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The real `numatune` command (the installed one, or the tree's through .devbin)."""
    env = dict(os.environ, NUMATUNE_CACHE=str(tmp_path / "cache"), TMPDIR=str(private_tmp(tmp_path)))
    return subprocess.run(["numatune", *argv], capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))


def assert_one_line_exit_2(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("numatune: error"), done.stderr


# ----- GGUF: the reader and the engine's loader --------------------------------------------------

VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ndims_at: int
    dims_at: tuple[int, ...]
    dims: tuple[int, ...]
    type_at: int
    offset_at: int
    offset: int


@dataclass(frozen=True)
class Layout:
    """Byte positions of a GGUF (v3) file's fields, for mutating them in place."""
    kv_keys_at: tuple[int, ...]          # the u64 length of each key
    kv_types_at: tuple[int, ...]
    tensors: tuple[TensorInfo, ...]
    data_start: int


def layout(data: bytes) -> Layout:
    assert data[:4] == b"GGUF" and struct.unpack_from("<I", data, 4)[0] == 3
    tensor_count, kv_count = struct.unpack_from("<QQ", data, 8)
    pos, keys, types = 24, [], []

    def string(at: int) -> int:
        return at + 8 + struct.unpack_from("<Q", data, at)[0]

    def value(kind: int, at: int) -> int:
        if kind == 8:
            return string(at)
        if kind == 9:
            item, count = struct.unpack_from("<IQ", data, at)
            at += 12
            for _ in range(count):
                at = value(item, at)
            return at
        return at + VALUE_SIZES[kind]
    for _ in range(kv_count):
        keys.append(pos)
        pos = string(pos)
        types.append(pos)
        pos = value(struct.unpack_from("<I", data, pos)[0], pos + 4)
    tensors = []
    for _ in range(tensor_count):
        name_end = string(pos)
        name = data[pos + 8:name_end].decode()
        ndims_at = name_end
        ndims = struct.unpack_from("<I", data, ndims_at)[0]
        dims_at = tuple(ndims_at + 4 + 8 * i for i in range(ndims))
        dims = tuple(struct.unpack_from("<Q", data, at)[0] for at in dims_at)
        type_at = ndims_at + 4 + 8 * ndims
        offset_at = type_at + 4
        tensors.append(TensorInfo(name, ndims_at, dims_at, dims, type_at, offset_at,
                                  struct.unpack_from("<Q", data, offset_at)[0]))
        pos = offset_at + 8
    return Layout(tuple(keys), tuple(types), tuple(tensors), -(-pos // 32) * 32)


def put(data: bytes, at: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """Small valid models: Q8_0 (qwen3moe) and Q4_K_M (deepseek2, with the selection bias)."""
    where = tmp_path_factory.mktemp("ggufs")
    q8 = replace(PRESETS["default"], hidden=64, intermediate=64, experts=4, top_k=2, layers=1)
    k4 = replace(PRESETS["deepseek-v3"], hidden=256, intermediate=256, experts=4, top_k=2, layers=1)
    synthesize(where / "q8.gguf", q8, "Q8_0")
    synthesize(where / "k4.gguf", k4, "Q4_K_M")
    return where / "q8.gguf", where / "k4.gguf"


# What a mutation breaks: the container (every reader refuses), only the model (the GGUF is
# well-formed, so `audit --model` may size it, but the engine's loader refuses), or maybe nothing.
CONTAINER, MODEL, MAYBE = "container", "model", "maybe"


def gguf_mutations(base: bytes, rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(what, bytes, what it breaks) for one base file."""
    lay = layout(base)
    experts = [t for t in lay.tensors if t.name.endswith("_exps.weight")]
    quantized = [t for t in lay.tensors if t.name.endswith("gate_exps.weight")][0]
    last = max(lay.tensors, key=lambda t: t.offset)
    size = len(base)
    out = [(f"truncated at {n}", base[:n], CONTAINER)
           for n in sorted({0, 3, 8, 20, 30, lay.data_start - 1, lay.data_start, size - 1}
                           | {rng.randrange(24, lay.data_start) for _ in range(4)}
                           | {rng.randrange(lay.data_start, size) for _ in range(3)})]
    out += [
        ("tensor count 2^63", put(base, 8, "<Q", (1 << 63) - 1), False),
        ("tensor count +1", put(base, 8, "<Q", len(lay.tensors) + 1), False),
        ("metadata count 2^62", put(base, 16, "<Q", 1 << 62), False),
        ("key length 2^62", put(base, lay.kv_keys_at[0], "<Q", 1 << 62), False),
        ("value type 99", put(base, lay.kv_types_at[0], "<I", 99), False),
        ("version 99", put(base, 4, "<I", 99), False),
        ("n_dims 2^32-1", put(base, quantized.ndims_at, "<I", 0xFFFFFFFF), False),
        ("n_dims 0", put(base, quantized.ndims_at, "<I", 0), False),
        ("dim 2^62", put(base, quantized.dims_at[1], "<Q", 1 << 62), False),
        ("dims multiplying past 2^64", put(put(base, quantized.dims_at[1], "<Q", 1 << 32), quantized.dims_at[2], "<Q", 1 << 32), False),
        ("dim 0", put(base, quantized.dims_at[2], "<Q", 0), MODEL),
        ("row not whole blocks", put(base, quantized.dims_at[0], "<Q", quantized.dims[0] + 16), False),
        ("more experts than stored", put(base, last.dims_at[-1], "<Q", last.dims[-1] * 2), False),
        ("tensor type 99", put(base, quantized.type_at, "<I", 99), False),
        # Q5_0 is computed now and its blocks are smaller than Q8_0's: a valid (if meaningless) file
        ("tensor type Q5_0 over Q8_0 bytes", put(base, quantized.type_at, "<I", 6), MAYBE),
        ("tensor type TQ2_0 (not computed)", put(base, quantized.type_at, "<I", 35), MODEL),
        ("tensor type F32 over quantized bytes", put(base, quantized.type_at, "<I", 0), False),
        ("offset 2^62", put(base, quantized.offset_at, "<Q", 1 << 62), False),
        ("offset past the end", put(base, last.offset_at, "<Q", size - lay.data_start), False),
        ("offset unaligned", put(base, last.offset_at, "<Q", last.offset + 1), False),
        ("overlapping tensors", put(base, experts[1].offset_at, "<Q", experts[0].offset), False),
    ]
    for i in range(6):             # random bytes over the header: anything may come out
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(8, lay.data_start)] = rng.randrange(256)
        out.append((f"random header bytes #{i}", bytes(mutated), MAYBE))
    return out


def semantic_models(where: Path) -> list[tuple[str, Path]]:
    """Well-formed GGUF files whose model is wrong: shapes, counts, types, missing tensors."""
    import gguf
    import numpy as np
    from numatune import quants
    rng = np.random.default_rng(SEED)
    made = []

    def write(name, experts_meta=4, top_k=2, tensors=None, arch="qwen3moe", expert_type="Q8_0"):
        path = where / f"{name}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        if experts_meta is not None:
            (writer.add_uint32 if isinstance(experts_meta, int) else writer.add_string)(f"{arch}.expert_count", experts_meta)
        writer.add_uint32(f"{arch}.expert_used_count", top_k)
        default = {"ffn_gate_inp": (4, 64), "ffn_gate_exps": (4, 64, 64), "ffn_up_exps": (4, 64, 64),
                   "ffn_down_exps": (4, 64, 64)}
        for tensor, shape in (tensors or default).items():
            if shape is None:
                continue
            values = rng.standard_normal(shape).astype(np.float32)
            if tensor == "ffn_gate_inp":
                writer.add_tensor(f"blk.0.{tensor}.weight", values)
            else:
                kind = gguf.GGMLQuantizationType[expert_type]
                data = (quants.quantize(values.reshape(-1, shape[-1]), expert_type) if expert_type in quants.TYPE_NAMES
                        else gguf.quants.quantize(values.reshape(-1, shape[-1]), kind)).reshape(*shape[:-1], -1)
                writer.add_tensor(f"blk.0.{tensor}.weight", data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        made.append((name, path))
    write("expert_count 0", experts_meta=0)
    write("expert_count missing", experts_meta=None)
    write("expert_count a string", experts_meta="four")
    write("expert_count larger than stored", experts_meta=8)
    write("top-k 0", top_k=0)
    write("top-k above the experts", top_k=5)
    write("top-k 2^31", top_k=(1 << 31) - 1)
    write("unknown architecture", arch="gpt2")
    base = {"ffn_gate_inp": (4, 64), "ffn_gate_exps": (4, 64, 64), "ffn_up_exps": (4, 64, 64), "ffn_down_exps": (4, 64, 64)}
    write("router of other width", tensors={**base, "ffn_gate_inp": (4, 32)})
    write("up of other width", tensors={**base, "ffn_up_exps": (4, 32, 64)})
    write("down of other shape", tensors={**base, "ffn_down_exps": (4, 32, 64)})
    write("up with fewer experts", tensors={**base, "ffn_up_exps": (2, 64, 64)})
    write("up missing", tensors={**base, "ffn_up_exps": None})
    write("router missing", tensors={**base, "ffn_gate_inp": None})
    write("two-dimensional experts", tensors={**base, "ffn_gate_exps": (4 * 64, 64)})
    wide = {"ffn_gate_inp": (4, 256), "ffn_gate_exps": (4, 256, 256), "ffn_up_exps": (4, 256, 256),
            "ffn_down_exps": (4, 256, 256)}
    write("TQ2_0 experts (not computed)", expert_type="TQ2_0", tensors=wide)
    return made


def gguf_cases(path: Path, what: str) -> list[Case]:
    bench = ("bench", "--model", str(path), "--threads", "1", "--tokens", "1", "--repeats", "1", "--no-bandwidth", "--json")
    return [Case(f"{what}: engine loader", bench), Case(f"{what}: GGUF reader", ("audit", "--model", str(path), "--json"))]


def test_fuzzed_gguf_files_are_refused_in_one_line(ggufs, tmp_path):
    rng = random.Random(SEED)
    cases = []
    for base in ggufs:
        for i, (what, data, breaks) in enumerate(gguf_mutations(base.read_bytes(), rng)):
            path = tmp_path / f"{base.stem}-{i}.gguf"
            path.write_bytes(data)
            cases += [replace(c, may_succeed=breaks == MAYBE or (breaks == MODEL and "GGUF reader" in c.what))
                      for c in gguf_cases(path, f"{base.name}, {what}")]
    for what, path in semantic_models(tmp_path):
        cases += [replace(c, may_succeed="GGUF reader" in c.what) for c in gguf_cases(path, what)]
    check(cases, run_all(cases, tmp_path))


def test_a_truncated_gguf_through_the_real_command(ggufs, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(ggufs[1].read_bytes()[:-1000])
    assert_one_line_exit_2(run_command(["bench", "--model", str(path), "--threads", "1", "--tokens", "1",
                                        "--repeats", "1", "--no-bandwidth"], tmp_path))


# ----- sysfs trees: the probe ------------------------------------------------------------------

GARBAGE = ["", "\x00", "0-3\x004-7", "\x00\x00\x00\x00", "-1", "3-1", "0-", "a-b", "0-4294967295", "0-65536",
           "1,,2", "0-3:0/4", "18446744073709551616", "ffffffffffffffffffffffffffffffff,", "0x", "10 20 x",
           "Node 0 MemTotal: kB", "[[[", "\udcff\udcfe", "9" * 5000]
TARGETS = ["sys/devices/system/node/node0/cpulist", "sys/devices/system/node/online",
           "sys/devices/system/node/has_memory", "sys/devices/system/cpu/online", "sys/devices/system/cpu/possible",
           "sys/devices/system/cpu/present", "sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
           "sys/devices/system/cpu/cpu1/topology/core_id", "sys/devices/system/cpu/cpu0/topology/physical_package_id",
           "sys/devices/system/node/node1/meminfo", "sys/devices/system/node/node0/distance",
           "sys/devices/system/cpu/cpu0/cache/index0/size", "sys/devices/system/cpu/cpu0/cache/index3/shared_cpu_list",
           "proc/self/status", "proc/meminfo", "proc/cpuinfo", "proc/cmdline", "proc/sys/kernel/numa_balancing",
           "sys/kernel/mm/transparent_hugepage/enabled"]


def tree_mutations(rng: random.Random) -> list[tuple[str, object]]:
    """(what, a function that spoils a tree in place)."""
    def write(rel, text):
        def spoil(root: Path):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
        return spoil

    def link(rel, target):
        def spoil(root: Path):
            path = root / rel
            if path.is_dir() and not path.is_symlink():
                import shutil
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.symlink_to(target)
        return spoil

    def both(*spoils):
        def spoil(root: Path):
            for one in spoils:
                one(root)
        return spoil
    node, cpu = "sys/devices/system/node", "sys/devices/system/cpu"
    out = [
        ("non-square distances (3 values for 2 nodes)", write(f"{node}/node0/distance", "10 21 31\n")),
        ("non-square distances (1 value)", write(f"{node}/node1/distance", "10\n")),
        ("distances with NUL bytes", write(f"{node}/node0/distance", "10\x0021\n")),
        ("node cpulist beyond any CPU", write(f"{node}/node0/cpulist", "0-4294967295\n")),
        ("cpu online list huge", write(f"{cpu}/online", "0-99999999999\n")),
        ("cpulist with NUL in the middle", write(f"{node}/node1/cpulist", "4-5\x006-7\n")),
        ("file symlinked to itself", link(f"{node}/node0/cpulist", "cpulist")),
        ("two files linked to each other", both(link(f"{node}/node0/meminfo", "../node1/meminfo"),
                                                link(f"{node}/node1/meminfo", "../node0/meminfo"))),
        ("topology directory in a loop", both(link(f"{cpu}/cpu0/topology", "topology2"),
                                              link(f"{cpu}/cpu0/topology2", "topology"))),
        ("node directory linked to its parent", link(f"{node}/node1", ".")),
        ("cpu directory linked to the root", link(f"{cpu}/cpu1", "/")),
        ("proc linked to itself", link("proc", "proc")),
        ("cpuinfo of random bytes", write("proc/cpuinfo", "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(3000)))),
        ("meminfo of huge numbers", write("proc/meminfo", "MemTotal: 99999999999999999999999999 kB\n")),
    ]
    for i in range(16):
        rel, text = rng.choice(TARGETS), rng.choice(GARBAGE)
        out.append((f"random garbage #{i} in {rel}: {text[:20]!r}", write(rel, text)))
    return out


def test_fuzzed_sysfs_trees_are_read_or_refused_in_one_line(tmp_path):
    import shutil
    rng = random.Random(SEED + 1)
    base = write_tree(tmp_path / "base", seed_machine(cores_per_node=2, threads_per_core=2))
    cases, roots = [], []
    for i, (what, spoil) in enumerate(tree_mutations(rng)):
        root = tmp_path / f"tree{i}"
        shutil.copytree(base, root, symlinks=True)
        spoil(root)
        roots.append(root)
        cases += [Case(f"{what}: probe --json", ("probe", "--root", str(root), "--json"), may_succeed=True),
                  Case(f"{what}: probe", ("probe", "--root", str(root)), may_succeed=True),
                  Case(f"{what}: audit", ("audit", "--root", str(root), "--json", "--fail-on", "never"), may_succeed=True)]
    results = run_all(cases, tmp_path)
    check(cases, results)
    for case, result in zip(cases, results):
        if result["code"] == 0 and case.argv[-1] == "--json" and case.argv[0] == "probe":
            jsonschema.validate(json.loads(result["stdout"]), PROBE_SCHEMA)


# ----- capture tarballs ------------------------------------------------------------------------

def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if size is None else size
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def write_tarball(path: Path, members: list, compression: str = "") -> None:
    """A tar written header by header, so that sizes may lie (a member claiming a terabyte)."""
    raw = BytesIO()
    for info, data in members:
        raw.write(info.tobuf(tarfile.GNU_FORMAT))
        raw.write(data + b"\0" * (-len(data) % 512))
    raw.write(b"\0" * 1024)
    payload = raw.getvalue()
    if compression == "bz2":
        import bz2
        payload = bz2.compress(payload)
    elif compression == "gz":
        import gzip
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def capture_members(base: Path) -> list:
    """A real tree as tar members under one top directory."""
    out = []
    for path in sorted(base.rglob("*")):
        rel = "machine/" + str(path.relative_to(base))
        if path.is_symlink():
            out.append(member(rel, kind=tarfile.SYMTYPE, link=os.readlink(path)))
        elif path.is_dir():
            out.append(member(rel, kind=tarfile.DIRTYPE))
        else:
            out.append(member(rel, path.read_bytes()))
    return out


def test_hostile_capture_tarballs_write_nothing_and_are_read_or_refused(tmp_path):
    base = capture_members(write_tree(tmp_path / "base", seed_machine(cores_per_node=2)))
    outside = tmp_path / "outside"
    absolute = tmp_path / "absolute-target"
    hostile = {
        "dot-dot member": [member("machine/../../outside", b"x")],
        "absolute member": [member(str(absolute / "file"), b"x")],
        "symlink out of the tree": [member("machine/sys/devices/system/node/node0", kind=tarfile.SYMTYPE, link="/etc")],
        "symlink up and out": [member("machine/proc/meminfo", kind=tarfile.SYMTYPE, link="../../../../../../etc/passwd")],
        "hard link out of the tree": [member("machine/proc/cpuinfo", kind=tarfile.LNKTYPE, link="/etc/passwd")],
        "character device": [member("machine/dev/mem", kind=tarfile.CHRTYPE)],
        "block device": [member("machine/dev/sda", kind=tarfile.BLKTYPE)],
        "fifo": [member("machine/proc/self/status", kind=tarfile.FIFOTYPE)],
        "symlink loop": [member("machine/sys/a", kind=tarfile.SYMTYPE, link="b"),
                         member("machine/sys/b", kind=tarfile.SYMTYPE, link="a")],
        "directory linked to itself": [member("machine/sys/devices/system/cpu/cpu0", kind=tarfile.SYMTYPE, link=".")],
    }
    cases, files = [], []
    for i, (what, extra) in enumerate(hostile.items()):
        for compression in ("", "bz2"):
            path = tmp_path / f"capture{i}.tar{'.' + compression if compression else ''}"
            write_tarball(path, base + extra, compression)
            files.append(path)
            cases.append(Case(f"{what} ({path.name})", ("probe", "--root", str(path), "--json"), may_succeed=True))
    refused = {
        "a member claiming a terabyte": base + [member("machine/proc/huge", b"x" * 100, size=1 << 40)],
        "a member past the size limit": base + [member("machine/proc/big", bytes((64 << 20) + 1))],
        "truncated": None,
        "no top directory": [member("a", b"x"), member("b", b"y")],
        "empty": [],
    }
    for i, (what, members) in enumerate(refused.items()):
        path = tmp_path / f"refused{i}.tar.gz"
        if members is None:
            write_tarball(path, base, "gz")
            path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        else:
            write_tarball(path, members, "gz")
        cases.append(Case(f"{what} ({path.name})", ("probe", "--root", str(path), "--json")))
    results = run_all(cases, tmp_path)
    check(cases, results)
    for case, result in zip(cases, results):
        if result["code"] == 0:
            jsonschema.validate(json.loads(result["stdout"]), PROBE_SCHEMA)
    assert not outside.exists() and not absolute.exists()
    assert not list(private_tmp(tmp_path).iterdir())             # nothing extracted, nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        [f.name for f in files] + [f"refused{i}.tar.gz" for i in range(len(refused))] + ["cases.json", "log.jsonl"])


def test_a_hostile_capture_through_the_real_command(tmp_path):
    path = tmp_path / "evil.tar.bz2"
    write_tarball(path, [member("machine/proc/huge", b"x", size=1 << 40)], "bz2")
    assert_one_line_exit_2(run_command(["probe", "--root", str(path)], tmp_path))
    assert not list(private_tmp(tmp_path).iterdir())


def test_cpu_lists_and_masks_beyond_any_machine_are_refused_not_expanded():
    from numatune.sysfs import MAX_CPU_NUMBER, parse_cpulist, parse_cpumask
    assert parse_cpulist(f"0,{MAX_CPU_NUMBER}") == [0, MAX_CPU_NUMBER]
    for text in (f"0-{MAX_CPU_NUMBER + 1}", "0-4294967295", "18446744073709551616"):
        with pytest.raises(ValueError, match="beyond"):
            parse_cpulist(text)
    with pytest.raises(ValueError, match="beyond"):
        parse_cpumask("1" + "0" * 20000)
