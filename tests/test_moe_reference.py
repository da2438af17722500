"""The engine's FFN layers against the independent torch reference (tests/moe_reference.py), on
synthetic GGUFs of every architecture the engine accepts: routing (groups, ties and near-ties,
one group, all groups used), shared experts and dense blocks, under every placement policy and
1, 2 and 3 workers (on this machine's node 0: the policies still run their own code paths).

Tolerance: the engine quantizes the activation to 8 bits once per token (Q8_0 weights: Q8_0
activation) where the reference is float64, which gives a relative error near 0.013 on these
layers; 0.03 is asserted. F32 files (the routing cases) are compared within 1e-5.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import replace

import gguf
import numpy as np
import pytest
import torch

import moe_reference as ref
from numatune.engine import Engine
from numatune.policy import NAMES as POLICIES
from numatune.errors import ModelError, NumatuneError
from numatune.gguf_moe import read_moe_model
from numatune.synth import PRESETS, synthesize
from test_engine import isa  # noqa: F401 (the fixture: every ISA variant in turn)

CPUS = sorted(os.sched_getaffinity(0))[:2]
ARCH_PRESETS = ("deepseek-v3", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "mixtral-8x7b", "llama4-scout")
Q8_TOLERANCE = 0.03


def small(name: str):
    p = PRESETS[name]
    return replace(p, hidden=256, intermediate=256, experts=8 if p.experts == 8 else 16, layers=2,
                   dense_layers=min(p.dense_layers, 1), dense_width=512 if p.dense_layers else 0,
                   shared_width=384 if p.shared_width else 0)


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("arch")
    return {name: synthesize(out / f"{name}.gguf", small(name), "Q8_0", seed=5).path for name in ARCH_PRESETS}


def relative_error(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def compare(engine: Engine, path, tolerance: float, seeds=range(3)) -> None:
    routing, blocks = ref.load(path)
    assert len(blocks) == engine.layers
    for layer, block in enumerate(blocks):
        for seed in seeds:
            x = np.random.default_rng(100 * layer + seed).standard_normal(engine.model.hidden).astype(np.float32)
            y, ids, weights = engine.route_and_forward(layer, x)
            y_ref, ids_ref, weights_ref = ref.block_forward(routing, block, torch.tensor(x, dtype=torch.float64))
            assert list(ids) == ids_ref.tolist(), (layer, seed)
            np.testing.assert_allclose(weights, weights_ref.numpy(), rtol=1e-4, err_msg=f"layer {layer}")
            assert relative_error(y, y_ref.numpy()) < tolerance, (layer, seed)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", ARCH_PRESETS)
def test_every_architecture_matches_the_reference(arch_models, host, name, policy, workers):
    cpus = (CPUS * 3)[:workers]
    engine = Engine.load(arch_models[name], cpus, policy, [0] if policy in ("bind", "interleave") else None,
                         topology=host)
    compare(engine, arch_models[name], Q8_TOLERANCE)


# The codebook types pair with a Q8_K activation (one scale per 256 values, coarser than Q8_0's
# per 32): measured 0.014-0.023 relative error here for each (as for Q2_K), MXFP4 (Q8_0) alike;
# 0.04 is asserted.
IQ_TOLERANCE = 0.04


@pytest.mark.parametrize("type_name", ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ2_S", "IQ3_S", "MXFP4"])
def test_codebook_types_and_mxfp4_match_the_reference(tmp_path, host, isa, type_name):
    """DeepSeek-V3-shaped layers (dense block, shared expert, grouped routing) in each type, with
    each ISA variant's kernels; the synthetic file holds random valid blocks of it (MXFP4: gguf's
    quantizer), which the reference decodes with gguf."""
    chosen = replace(small("deepseek-v3"), shared_width=512)   # rows of whole 256-weight blocks
    path = synthesize(tmp_path / f"{type_name}.gguf", chosen, type_name, seed=5).path
    moe = read_moe_model(path).layers[1]
    assert {moe.gate.type_name, moe.up.type_name, moe.down.type_name} == {type_name}
    engine = Engine.load(path, CPUS, "first-touch", topology=host)
    compare(engine, path, IQ_TOLERANCE)


def test_presets_carry_the_real_models_routing(arch_models):
    ds = read_moe_model(arch_models["deepseek-v3"])
    assert (ds.gating, ds.normalize, ds.scale, ds.groups, ds.groups_used, ds.top_k) == ("sigmoid", True, 2.5, 8, 4, 8)
    assert ds.layers[0].dense and ds.layers[0].shared is not None
    assert all(layer.router_bias is not None and layer.shared is not None for layer in ds.moe_layers)
    qwen2 = read_moe_model(arch_models["qwen1.5-moe-a2.7b"])
    assert (qwen2.gating, qwen2.normalize) == ("softmax", False)
    assert all(layer.shared.gate_inp is not None for layer in qwen2.moe_layers)
    qwen3 = read_moe_model(arch_models["qwen3-30b-a3b"])
    assert (qwen3.gating, qwen3.normalize, qwen3.groups) == ("softmax", True, 1)
    assert all(layer.shared is None for layer in qwen3.layers)
    llama4 = read_moe_model(arch_models["llama4-scout"])
    assert (llama4.gating, llama4.weight_before, llama4.top_k) == ("sigmoid", True, 1)


def test_shared_and_dense_bytes_are_counted(arch_models, host):
    engine = Engine.load(arch_models["deepseek-v3"], CPUS, "first-touch", topology=host)
    model = engine.model
    per_expert = model.expert_bytes // (model.experts * len(model.moe_layers))
    routers = sum(layer.router.nbytes + layer.router_bias.nbytes for layer in model.moe_layers)
    expected = routers + len(model.moe_layers) * model.top_k * per_expert + model.shared_bytes
    result = engine.decode_bench(tokens=2, warmup=0)
    assert result["bytes_per_token"] == expected
    assert model.shared_bytes > 0 and result["executed_share"] == pytest.approx(1.0)
    assert engine.placement(64)["pages"].keys() >= {"ffn-gate", "ffn-up", "ffn-down"}


# Routing cases on F32 files written here: 16 experts in 4 groups, hidden 32, width 32.
HIDDEN, WIDTH, EXPERTS = 32, 32, 16


def write_model(path, router, bias=None, groups=None, used=None, gating=2, norm=True, scale=2.5, top_k=3,
                arch="deepseek2", extra=None):
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_uint32(f"{arch}.expert_count", EXPERTS)
    writer.add_uint32(f"{arch}.expert_used_count", top_k)
    if arch == "deepseek2":
        writer.add_uint32(f"{arch}.expert_gating_func", gating)
        writer.add_bool(f"{arch}.expert_weights_norm", norm)
        writer.add_float32(f"{arch}.expert_weights_scale", scale)
    if groups is not None:
        writer.add_uint32(f"{arch}.expert_group_count", groups)
    if used is not None:
        writer.add_uint32(f"{arch}.expert_group_used_count", used)
    for key, value in (extra or {}).items():
        writer.add_uint32(key, value)
    writer.add_tensor("blk.0.ffn_gate_inp.weight", router.astype(np.float32))
    if bias is not None:
        writer.add_tensor("blk.0.exp_probs_b.bias", bias.astype(np.float32))
    for name, shape in (("gate", (EXPERTS, WIDTH, HIDDEN)), ("up", (EXPERTS, WIDTH, HIDDEN)),
                        ("down", (EXPERTS, HIDDEN, WIDTH))):
        writer.add_tensor(f"blk.0.ffn_{name}_exps.weight", rng.standard_normal(shape).astype(np.float32) / 6)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tied_router(rng):
    """Groups 1 and 3 near-tied and ahead of the others (a larger selection bias); group 2 a copy
    of group 0, so that the two tie for the third group slot; expert 1 a copy of expert 0."""
    router = rng.standard_normal((EXPERTS, HIDDEN)) / np.sqrt(HIDDEN)
    bias = rng.standard_normal(EXPERTS) * 0.05
    router[1], bias[1] = router[0], bias[0]
    router[8:12], bias[8:12] = router[0:4], bias[0:4]
    bias[4:8] += 1.0
    # Group 3: group 1's experts, each a near-tie ahead (2e-5 more bias: ~150 float32 ulps).
    router[12:16], bias[12:16] = router[4:8], bias[4:8] + 2e-5
    return router, bias


def routed(engine, seeds=range(40)):
    out = []
    for seed in seeds:
        x = np.random.default_rng(seed).standard_normal(HIDDEN).astype(np.float32)
        out.append(engine.route_and_forward(0, x))
    return out


def test_grouped_routing_with_ties_and_near_ties(tmp_path, host):
    router, bias = tied_router(np.random.default_rng(1))
    path = write_model(tmp_path / "ties.gguf", router, bias, groups=4, used=3, top_k=10)
    engine = Engine.load(path, CPUS, "first-touch", topology=host)
    compare(engine, path, 1e-5, seeds=range(40))
    for _, ids, _ in routed(engine):
        chosen = set(ids.tolist())
        assert set(range(4, 8)) | set(range(12, 16)) <= chosen      # the two leading groups
        assert len(chosen & set(range(0, 4))) == 2                  # group 0 wins its tie with group 2
        assert not chosen & set(range(8, 12))
        assert 1 not in chosen or 0 in chosen                       # expert 0 wins its tie with expert 1
        order = ids.tolist()
        assert all(order.index(12 + i) < order.index(4 + i) for i in range(4))   # near-ties resolved


def test_grouping_changes_the_choice_and_matches_the_reference(tmp_path, host):
    rng = np.random.default_rng(2)
    router = rng.standard_normal((EXPERTS, HIDDEN)) / np.sqrt(HIDDEN)
    bias = rng.standard_normal(EXPERTS) * 0.05
    grouped = Engine.load(write_model(tmp_path / "g.gguf", router, bias, groups=4, used=1), CPUS, "bind", [0],
                          topology=host)
    flat = Engine.load(write_model(tmp_path / "f.gguf", router, bias), CPUS, "bind", [0], topology=host)
    compare(grouped, tmp_path / "g.gguf", 1e-5, seeds=range(20))
    differs = [set(a[1].tolist()) != set(b[1].tolist()) for a, b in zip(routed(grouped), routed(flat))]
    assert any(differs)
    for _, ids, _ in routed(grouped):              # one group used: all three from one group of four
        assert len({int(i) // 4 for i in ids}) == 1


@pytest.mark.parametrize("groups, used", [(1, 1), (4, 4), (None, None)])
def test_one_group_or_all_groups_is_ungrouped_routing(tmp_path, host, groups, used):
    rng = np.random.default_rng(3)
    router = rng.standard_normal((EXPERTS, HIDDEN)) / np.sqrt(HIDDEN)
    bias = rng.standard_normal(EXPERTS) * 0.05
    plain = Engine.load(write_model(tmp_path / "plain.gguf", router, bias), CPUS, "first-touch", topology=host)
    other = Engine.load(write_model(tmp_path / "other.gguf", router, bias, groups, used), CPUS, "first-touch",
                        topology=host)
    for (y0, ids0, w0), (y1, ids1, w1) in zip(routed(plain), routed(other)):
        assert ids0.tolist() == ids1.tolist() and y0.tobytes() == y1.tobytes()


def test_v2_grouping_without_bias_scores_a_group_by_its_best(tmp_path, host):
    rng = np.random.default_rng(4)
    router = rng.standard_normal((EXPERTS, HIDDEN)) / np.sqrt(HIDDEN)
    path = write_model(tmp_path / "v2.gguf", router, None, groups=4, used=2, gating=1, norm=False, scale=1.0)
    engine = Engine.load(path, CPUS, "partition", topology=host)
    assert (engine.model.gating, engine.model.normalize) == ("softmax", False)
    compare(engine, path, 1e-5, seeds=range(40))


# Malformed files: one line naming file and tensor or field, exit status 2, through the CLI.

def run_bench(path):
    return subprocess.run(["numatune", "bench", "--model", str(path), "--cpus", str(CPUS[0]), "--tokens", "1",
                           "--repeats", "1", "--no-bandwidth"], capture_output=True, text=True, timeout=120)


def patch_columns(path, tensor: str, columns: int) -> None:
    """Rewrites the first dimension of a tensor in the file's header (a type/shape disagreement)."""
    data = bytearray(path.read_bytes())
    at = data.index(tensor.encode()) + len(tensor) + 4        # after the name: n_dims (uint32), then ne0
    struct.pack_into("<Q", data, at, columns)
    path.write_bytes(bytes(data))


def shexp_model(path, width_cols: int):
    writer = gguf.GGUFWriter(str(path), "qwen2moe")
    writer.add_uint32("qwen2moe.expert_count", 4)
    writer.add_uint32("qwen2moe.expert_used_count", 2)
    writer.add_tensor("blk.0.ffn_gate_inp.weight", np.zeros((4, HIDDEN), np.float32))
    for name, shape in (("gate", (4, WIDTH, HIDDEN)), ("up", (4, WIDTH, HIDDEN)), ("down", (4, HIDDEN, WIDTH))):
        writer.add_tensor(f"blk.0.ffn_{name}_exps.weight", np.zeros(shape, np.float32))
    writer.add_tensor("blk.0.ffn_gate_shexp.weight", np.zeros((64, width_cols), np.float32))
    writer.add_tensor("blk.0.ffn_up_shexp.weight", np.zeros((64, HIDDEN), np.float32))
    writer.add_tensor("blk.0.ffn_down_shexp.weight", np.zeros((HIDDEN, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("case, pattern", [
    ("groups-do-not-divide", r"deepseek2\.expert_group_count = 3 does not divide deepseek2\.expert_count = 16"),
    ("more-groups-used", r"deepseek2\.expert_group_used_count = 5 is outside 1\.\.4"),
    ("too-few-eligible", r"expert_group_used_count = 1 leaves 2 eligible experts, fewer than"),
    ("shared-shape", r"tensor blk\.0\.ffn_gate_shexp\.weight has shape \[48, 64\] per matrix, expected \[32, 64\]"),
    ("shape", r"tensor blk\.0\.ffn_gate_exps\.weight has shape \[31, 32\] per matrix, expected \[32, 32\]"),
    ("type-and-shape", r"tensor blk\.0\.ffn_down_exps\.weight has type Q8_0 and shape \[100, 256, 8\]: its 100 "
                       r"columns are not a whole number of 32-weight blocks"),
    ("unknown-key", r"metadata 'deepseek2\.expert_chunk_count' may change how experts are routed"),
    ("fixed-arch-key", r"qwen3moe\.expert_gating_func = 'sigmoid', but qwen3moe routes with 'softmax'"),
    ("gating-func", r"deepseek2\.expert_gating_func = 3 is a gating function the engine does not implement"),
])
def test_malformed_files_are_one_line_errors(tmp_path, case, pattern):
    rng = np.random.default_rng(5)
    router = rng.standard_normal((EXPERTS, HIDDEN))
    path = tmp_path / f"{case}.gguf"
    if case == "groups-do-not-divide":
        write_model(path, router, groups=3, used=1)
    elif case == "more-groups-used":
        write_model(path, router, groups=4, used=5)
    elif case == "too-few-eligible":
        write_model(path, router, groups=8, used=1)
    elif case == "shared-shape":
        shexp_model(path, 48)
    elif case == "shape":
        write_model(path, router)
        # narrower, not wider: a wider tensor would also overlap the next one, which the reader refuses first
        patch_columns(path, "blk.0.ffn_gate_exps.weight", 31)
    elif case == "type-and-shape":
        synthesize(path, replace(small("mixtral-8x7b"), layers=1), "Q8_0")
        patch_columns(path, "blk.0.ffn_down_exps.weight", 100)
    elif case == "unknown-key":
        write_model(path, router, extra={"deepseek2.expert_chunk_count": 2})
    elif case == "fixed-arch-key":
        write_model(path, router, arch="qwen3moe", extra={"qwen3moe.expert_gating_func": 2})
    elif case == "gating-func":
        write_model(path, router, gating=3)
    with pytest.raises(ModelError, match=pattern):
        read_moe_model(path)
    result = run_bench(path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_executed_share_counts_a_real_decode_step(tmp_path):
    """Attention, embeddings and the output head are in the step's bytes, not in the engine's:
    the embeddings by one row (the output head has its own tensor here), the routed experts by
    their top-k share, the multi-token-prediction block not at all."""
    path = write_model(tmp_path / "full.gguf", np.random.default_rng(6).standard_normal((EXPERTS, HIDDEN)),
                       extra={"deepseek2.block_count": 2, "deepseek2.nextn_predict_layers": 1})
    writer_extra = {"token_embd.weight": np.zeros((1000, HIDDEN), np.float32),
                    "output.weight": np.zeros((1000, HIDDEN), np.float32),
                    "blk.0.attn_q.weight": np.zeros((HIDDEN, HIDDEN), np.float32),
                    "blk.1.attn_q.weight": np.zeros((HIDDEN, HIDDEN), np.float32)}   # the MTP block
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "step.gguf"), "deepseek2")
    for field in reader.fields.values():
        if field.name.startswith("deepseek2."):
            value = field.contents()
            (writer.add_bool if isinstance(value, bool) else writer.add_float32 if isinstance(value, float)
             else writer.add_uint32)(field.name, value)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data).reshape([int(n) for n in reversed(tensor.shape)]))
    for name, values in writer_extra.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = read_moe_model(tmp_path / "step.gguf")
    experts = 3 * EXPERTS * WIDTH * HIDDEN * 4
    executed = experts * model.top_k // EXPERTS + EXPERTS * HIDDEN * 4
    step = executed + HIDDEN * 4 + 1000 * HIDDEN * 4 + HIDDEN * HIDDEN * 4
    assert (model.executed_bytes_per_token, model.step_bytes_per_token) == (executed, step)
    assert model.executed_share == pytest.approx(executed / step)
    result = subprocess.run(["numatune", "bench", "--model", str(tmp_path / "step.gguf"), "--cpus", str(CPUS[0]),
                             "--tokens", "2", "--repeats", "1", "--no-bandwidth", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["executed_share"] == pytest.approx(executed / step) and data["step_bytes_per_token"] == step


def test_a_dense_block_has_no_routed_experts(arch_models, host):
    engine = Engine.load(arch_models["deepseek-v3"], CPUS, "first-touch", topology=host)
    x = np.ones(engine.model.hidden, np.float32)
    y, ids, weights = engine.route_and_forward(0, x)
    assert len(ids) == 0 and len(weights) == 0 and np.isfinite(y).all() and np.abs(y).sum() > 0
    with pytest.raises(NumatuneError, match="layer 0 is a dense block"):
        engine.experts_forward(0, x, [0], [1.0])
