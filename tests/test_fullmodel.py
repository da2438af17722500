"""Complete synthetic models (`model synth --complete`): every tensor and metadata key llama.cpp's
loader asks for, at the architecture's shapes (that llama-bench decodes them is tested in
test_external.py with the real binary)."""
from __future__ import annotations

from dataclasses import replace

import gguf
import numpy as np
import pytest

from numatune.cli import main
from numatune.errors import ModelError
from numatune.fullmodel import ATTENTION, VOCAB_SIZE, synthesize_complete, vocabulary
from numatune.synth import PRESETS


def tensors(path) -> dict[str, tuple]:
    reader = gguf.GGUFReader(path)
    return {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in reader.tensors}, reader


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def test_qwen3moe_has_attention_norms_vocabulary_and_head(tmp_path):
    path = tmp_path / "q.gguf"
    p = replace(PRESETS["qwen3-30b-a3b"], layers=2, experts=8)
    synthesize_complete(path, p, "Q4_K_M")
    shapes, reader = tensors(path)
    a = ATTENTION["qwen3moe"]
    assert shapes["token_embd.weight"] == ((p.hidden, VOCAB_SIZE), "Q4_K")
    assert shapes["output.weight"] == ((p.hidden, VOCAB_SIZE), "Q6_K")
    assert shapes["output_norm.weight"] == ((p.hidden,), "F32")
    for block in range(2):
        b = f"blk.{block}."
        assert shapes[b + "attn_q.weight"] == ((p.hidden, a.heads * a.head_dim), "Q4_K")
        assert shapes[b + "attn_k.weight"] == ((p.hidden, a.kv_heads * a.head_dim), "Q4_K")
        assert shapes[b + "attn_v.weight"] == ((p.hidden, a.kv_heads * a.head_dim), "Q6_K")
        assert shapes[b + "attn_output.weight"] == ((a.heads * a.head_dim, p.hidden), "Q4_K")
        assert shapes[b + "attn_q_norm.weight"][0] == (a.head_dim,)
        assert shapes[b + "ffn_gate_exps.weight"] == ((p.hidden, p.intermediate, 8), "Q4_K")
        assert {b + "attn_norm.weight", b + "ffn_norm.weight", b + "ffn_gate_inp.weight"} <= set(shapes)
    assert field(reader, "tokenizer.ggml.model") == "llama"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB_SIZE and "<0x0A>" in tokens and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert field(reader, "qwen3moe.attention.head_count_kv") == a.kv_heads
    # the expert weights decode to the unit-scale values they were drawn as
    up = next(t for t in reader.tensors if t.name == "blk.0.ffn_up_exps.weight")
    values = gguf.quants.dequantize(up.data[0], up.tensor_type)
    assert 0.5 < float(np.std(values)) * np.sqrt(p.hidden) < 1.5


def test_deepseek2_has_multi_head_latent_attention_and_a_shared_expert(tmp_path):
    path = tmp_path / "d.gguf"
    p = replace(PRESETS["deepseek-v3"], hidden=1024, intermediate=256, experts=32, layers=1,
                dense_layers=1, dense_width=512)
    synthesize_complete(path, p, "Q8_0")
    shapes, reader = tensors(path)
    a = ATTENTION["deepseek2"]
    assert shapes["blk.0.attn_q_a.weight"][0] == (p.hidden, a.q_lora_rank)
    assert shapes["blk.0.attn_q_b.weight"][0] == (a.q_lora_rank, a.heads * (a.nope_dim + a.rope_dim))
    assert shapes["blk.0.attn_kv_a_mqa.weight"][0] == (p.hidden, a.kv_lora_rank + a.rope_dim)
    assert shapes["blk.0.attn_k_b.weight"][0] == (a.nope_dim, a.kv_lora_rank, a.heads)
    assert shapes["blk.0.attn_v_b.weight"][0] == (a.kv_lora_rank, a.v_head_dim, a.heads)
    assert shapes["blk.0.ffn_down.weight"][0] == (p.dense_width, p.hidden)          # the dense leading block
    assert "blk.0.ffn_gate_exps.weight" not in shapes
    assert shapes["blk.1.ffn_down_shexp.weight"][0] == (p.shared_width, p.hidden)
    assert field(reader, "deepseek2.expert_shared_count") == p.shared_width // p.intermediate
    assert field(reader, "deepseek2.leading_dense_block_count") == 1
    assert field(reader, "deepseek2.attention.key_length_mla") == a.nope_dim + a.rope_dim
    assert field(reader, "deepseek2.attention.kv_lora_rank") == a.kv_lora_rank


def test_cli_writes_a_complete_model(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["model", "synth", "--complete", "--preset", "qwen3-30b-a3b", "--layers", "1", "--experts", "8",
                 "--type", "Q8_0", "--out", str(out)]) == 0
    assert "token_embd.weight" in tensors(out)[0]


def test_vocabulary_needs_room_for_the_byte_tokens():
    tokens, scores, types = vocabulary(300)
    assert len(tokens) == len(scores) == len(types) == 300 and len(set(tokens)) == 300
    assert len(set(vocabulary(5000)[0])) == 5000
    with pytest.raises(ModelError, match="fewer than"):
        vocabulary(100)
