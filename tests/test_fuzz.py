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
    # NUMATUNE_QUICK_PROBE: the probe of "/" (bench) skips py-cpuinfo's second of ISA details.
    env = dict(os.environ, NUMATUNE_CACHE=str(tmp_path / "cache"), NUMATUNE_DATA=str(tmp_path / "data"),
               TMPDIR=str(private_tmp(tmp_path)), NUMATUNE_QUICK_PROBE="1", PYTHONPATH=os.pathsep.join(
                   p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p))
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
        ("tensor type Q5_0 (not computed)", put(base, quantized.type_at, "<I", 6), MODEL),
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
    write("Q4_0 experts (not computed)", expert_type="Q4_0")
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
