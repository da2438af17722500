"""An independent reference of each architecture's MoE feed-forward block, in torch (float64).

Written from the architectures' definitions, not from the engine: DeepSeek-V3's `Gate` and `MoE`
(inference/model.py: sigmoid or softmax scores, selection bias, group-limited top-k with a group
scored by its top-2 biased scores, or by its best score without a bias as in DeepSeek-V2;
weights from the unbiased scores, renormalised, × route_scale; shared experts added), Qwen2-MoE
(softmax top-k not renormalised, shared expert × sigmoid of its gate), Qwen3-MoE and Mixtral
(softmax top-k renormalised), Llama 4 (top-k on the logits, sigmoid of the logit scales the
expert's input, shared expert added), and dense blocks (one SwiGLU FFN). The file is read with
the `gguf` package directly and every weight dequantized by `gguf.quants.dequantize`.
Ties go to the lower index (groups and experts), by stable sorts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import gguf
import numpy as np
import torch


@dataclass
class Routing:
    gating: str                 # softmax | sigmoid
    normalize: bool
    scale: float
    top_k: int
    groups: int
    groups_used: int
    select_on_logits: bool      # Llama 4
    weight_input: bool          # Llama 4


@dataclass
class Ffn:
    gate: torch.Tensor          # [experts,] width × hidden
    up: torch.Tensor
    down: torch.Tensor          # [experts,] hidden × width


@dataclass
class Block:
    router: torch.Tensor | None
    bias: torch.Tensor | None
    experts: Ffn | None
    shared: Ffn | None          # shared expert, or the dense FFN of a dense block
    shared_gate: torch.Tensor | None


def _field(reader, key, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _dense(tensor) -> torch.Tensor:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = [int(n) for n in reversed(tensor.shape)]
    return torch.tensor(np.asarray(values, dtype=np.float64).reshape(shape))


def routing_of(reader) -> Routing:
    arch = _field(reader, "general.architecture")
    top_k = int(_field(reader, f"{arch}.expert_used_count"))
    groups = int(_field(reader, f"{arch}.expert_group_count", 1))
    groups_used = int(_field(reader, f"{arch}.expert_group_used_count", groups))
    if arch == "deepseek2":
        gating = {1: "softmax", 2: "sigmoid"}[int(_field(reader, f"{arch}.expert_gating_func", 1))]
        return Routing(gating, bool(_field(reader, f"{arch}.expert_weights_norm", False)),
                       float(_field(reader, f"{arch}.expert_weights_scale", 1.0) or 1.0), top_k, groups, groups_used,
                       False, False)
    if arch == "llama4":
        return Routing("sigmoid", False, 1.0, top_k, groups, groups_used, True, True)
    return Routing("softmax", arch != "qwen2moe", 1.0, top_k, groups, groups_used, False, False)


def load(path) -> tuple[Routing, list[Block]]:
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    numbers = sorted({int(m.group(1)) for name in tensors if (m := re.match(r"blk\.(\d+)\.ffn_", name))})
    blocks = []
    for n in numbers:
        p = f"blk.{n}."
        get = lambda name: _dense(tensors[p + name]) if p + name in tensors else None   # noqa: E731
        experts = Ffn(get("ffn_gate_exps.weight"), get("ffn_up_exps.weight"), get("ffn_down_exps.weight")) \
            if p + "ffn_gate_exps.weight" in tensors else None
        if experts is None:
            shared = Ffn(get("ffn_gate.weight"), get("ffn_up.weight"), get("ffn_down.weight"))
        elif p + "ffn_gate_shexp.weight" in tensors:
            shared = Ffn(get("ffn_gate_shexp.weight"), get("ffn_up_shexp.weight"), get("ffn_down_shexp.weight"))
        else:
            shared = None
        gate_inp = get("ffn_gate_inp_shexp.weight")
        blocks.append(Block(get("ffn_gate_inp.weight"), get("exp_probs_b.bias"), experts, shared,
                            gate_inp.reshape(-1) if gate_inp is not None else None))
    return routing_of(reader), blocks


def swiglu(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return down @ (torch.nn.functional.silu(gate @ x) * (up @ x))


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest, ties to the lower index."""
    return torch.sort(values, descending=True, stable=True).indices[:k]


def route(r: Routing, router: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor):
    logits = router @ x
    scores = torch.sigmoid(logits) if r.gating == "sigmoid" else torch.softmax(logits, dim=0)
    selection = logits.clone() if r.select_on_logits else scores.clone()
    if bias is not None:
        selection = selection + bias.reshape(-1)
    if r.groups > 1:
        grouped = selection.view(r.groups, -1)
        group_scores = grouped.topk(min(2, grouped.shape[1]), dim=1).values.sum(dim=1) if bias is not None \
            else grouped.amax(dim=1)
        keep = _top(group_scores, r.groups_used)
        mask = torch.ones(r.groups, dtype=torch.bool)
        mask[keep] = False
        selection = grouped.masked_fill(mask[:, None], float("-inf")).reshape(-1)
    ids = _top(selection, r.top_k)
    weights = scores[ids]
    if r.normalize:
        weights = weights / weights.sum()
    return ids, weights * r.scale


def block_forward(r: Routing, block: Block, x: torch.Tensor):
    """(y, chosen ids, their weights) of one block for one token."""
    y = torch.zeros_like(x)
    ids, weights = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    if block.experts is not None:
        ids, weights = route(r, block.router, block.bias, x)
        e = block.experts
        for i, w in zip(ids.tolist(), weights):
            if r.weight_input:
                y += swiglu(e.gate[i], e.up[i], e.down[i], w * x)
            else:
                y += w * swiglu(e.gate[i], e.up[i], e.down[i], x)
    if block.shared is not None:
        s = swiglu(block.shared.gate, block.shared.up, block.shared.down, x)
        if block.shared_gate is not None:
            s = s * torch.sigmoid(block.shared_gate @ x)
        y += s
    return y, ids, weights
