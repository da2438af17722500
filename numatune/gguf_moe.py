"""Reads the MoE layers of a GGUF file (memory-mapped): routers and routed experts.

Tensors, per block N: `blk.N.ffn_gate_inp.weight` (router, experts × hidden),
`blk.N.exp_probs_b.bias` (DeepSeek's selection bias, optional), and
`blk.N.ffn_{gate,up,down}_exps.weight` (experts stacked: gate/up experts × intermediate × hidden,
down experts × hidden × intermediate). Shared experts and attention are not read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

# GGML type numbers of the types the engine computes with.
SUPPORTED_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ4_NL": 20, "IQ4_XS": 23, "BF16": 30}
TYPE_NAMES = {number: name for name, number in SUPPORTED_TYPES.items()}

# How each architecture turns router logits into expert weights, as llama.cpp's graph builds it:
# (gating, renormalise the top-k weights, metadata key of a scaling factor or None).
_ARCHITECTURES = {
    "deepseek2": ("sigmoid", True, "expert_weights_scale"),
    "qwen3moe": ("softmax", True, None),
    "qwen2moe": ("softmax", False, None),
    "llama": ("softmax", True, None),        # Mixtral-style experts in a llama graph
    "mixtral": ("softmax", True, None),
    "llama4": ("sigmoid", False, None),
}
_BLOCK = re.compile(r"^blk\.(\d+)\.ffn_gate_exps\.weight$")


@dataclass(frozen=True)
class ExpertTensor:
    name: str
    type_name: str
    data: np.ndarray          # uint8 view of the mapped bytes: experts × rows × row_bytes


@dataclass(frozen=True)
class MoeLayer:
    block: int
    router: np.ndarray        # float32, experts × hidden
    router_bias: np.ndarray | None
    gate: ExpertTensor
    up: ExpertTensor
    down: ExpertTensor


@dataclass(frozen=True)
class MoeModel:
    path: str
    architecture: str
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    gating: str
    normalize: bool
    scale: float
    layers: tuple[MoeLayer, ...]

    @property
    def expert_bytes(self) -> int:
        """Bytes of all routed experts of all layers (one copy)."""
        return sum(t.data.nbytes for layer in self.layers for t in (layer.gate, layer.up, layer.down))

    @property
    def router_bytes(self) -> int:
        return sum(layer.router.nbytes for layer in self.layers)


def read_moe_model(path: str | Path) -> MoeModel:
    path = Path(path)
    reader = _open(path)
    arch = _meta(reader, path, "general.architecture", str)
    if arch not in _ARCHITECTURES:
        raise ModelError(f"{path}: architecture '{arch}' is not supported "
                         f"(supported: {', '.join(sorted(_ARCHITECTURES))})")
    tensors = {t.name: t for t in reader.tensors}
    blocks = sorted(int(m.group(1)) for name in tensors if (m := _BLOCK.match(name)))
    if not blocks:
        raise ModelError(f"{path}: no routed-expert tensors (blk.N.ffn_gate_exps.weight) in this file")
    experts = _meta(reader, path, f"{arch}.expert_count", int)
    if experts < 1:
        raise ModelError(f"{path}: {arch}.expert_count = {experts}, a MoE model has at least one expert")
    top_k = _meta(reader, path, f"{arch}.expert_used_count", int)
    gating, normalize, scale_key = _ARCHITECTURES[arch]
    if arch == "deepseek2":
        gating = {1: "softmax", 2: "sigmoid"}.get(_meta(reader, path, f"{arch}.expert_gating_func", int, 2), "sigmoid")
        normalize = bool(_meta(reader, path, f"{arch}.expert_weights_norm", bool, True))
    scale = float(_meta(reader, path, f"{arch}.{scale_key}", float, 1.0)) if scale_key else 1.0
    layers = tuple(_layer(path, tensors, block, experts) for block in blocks)
    first = layers[0]
    hidden, intermediate = first.router.shape[1], first.gate.data.shape[1]
    for layer in layers:
        _check_shapes(path, layer, experts, hidden, intermediate)
    if not 1 <= top_k <= experts:
        raise ModelError(f"{path}: {arch}.expert_used_count = {top_k} is outside 1..{experts}")
    return MoeModel(str(path), arch, hidden, intermediate, experts, top_k, gating, normalize, scale, layers)


def _open(path: Path):
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    import gguf
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, KeyError, IndexError, OSError, TypeError, OverflowError, MemoryError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a readable GGUF file ({detail})") from None
    check_layout(path, reader)
    return reader


def check_layout(path: Path, reader) -> None:
    """The tensors' bytes as the format requires them: each at an offset that is a multiple of the
    file's alignment, inside the file, and no two sharing bytes (gguf's reader checks none of it;
    overlapping tensors would be read as each other's weights)."""
    size = path.stat().st_size
    alignment = int(getattr(reader, "alignment", 32)) or 32
    spans = []
    for tensor in reader.tensors:
        start, length = int(tensor.data_offset), int(tensor.n_bytes)
        relative = start - int(getattr(reader, "data_offset", 0))
        if relative % alignment:
            raise ModelError(f"{path}: tensor {tensor.name} starts at data offset {relative}, "
                             f"not a multiple of the alignment {alignment}")
        if start + length > size:
            raise ModelError(f"{path}: tensor {tensor.name} ends at byte {start + length}, past the end "
                             f"of the file ({size} bytes)")
        spans.append((start, start + length, tensor.name))
    spans.sort()
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
        if start < end:
            raise ModelError(f"{path}: tensors {name} and {other} overlap (bytes {start}…{end})")


def _meta(reader, path: Path, key: str, kind, default=...):
    field = reader.get_field(key)
    if field is None:
        if default is ...:
            raise ModelError(f"{path}: metadata '{key}' is missing")
        return default
    value = field.contents()
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelError(f"{path}: metadata '{key}' has an unexpected value {value!r}") from None


def _layer(path: Path, tensors: dict, block: int, experts: int) -> MoeLayer:
    prefix = f"blk.{block}."
    router = _tensor(path, tensors, prefix + "ffn_gate_inp.weight")
    router_f32 = _to_float32(path, router)
    bias = tensors.get(prefix + "exp_probs_b.bias")
    return MoeLayer(
        block=block,
        router=router_f32.reshape(experts, -1) if router_f32.size % experts == 0 else router_f32,
        router_bias=_to_float32(path, bias).reshape(-1) if bias is not None else None,
        gate=_experts(path, tensors, prefix + "ffn_gate_exps.weight", experts),
        up=_experts(path, tensors, prefix + "ffn_up_exps.weight", experts),
        down=_experts(path, tensors, prefix + "ffn_down_exps.weight", experts),
    )


def _tensor(path: Path, tensors: dict, name: str):
    if name not in tensors:
        raise ModelError(f"{path}: tensor {name} is missing")
    return tensors[name]


def _type_name(path: Path, tensor) -> str:
    number = int(tensor.tensor_type)
    if number not in TYPE_NAMES:
        from .quants import unsupported_type_message
        raise ModelError(f"{path}: {unsupported_type_message(tensor.name, getattr(tensor.tensor_type, 'name', str(number)))}")
    return TYPE_NAMES[number]


def _to_float32(path: Path, tensor) -> np.ndarray:
    import gguf
    _type_name(path, tensor)
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.ascontiguousarray(values, dtype=np.float32)


def _experts(path: Path, tensors: dict, name: str, experts: int) -> ExpertTensor:
    tensor = _tensor(path, tensors, name)
    type_name = _type_name(path, tensor)
    ne = [int(n) for n in tensor.shape]              # GGUF order: columns, rows, experts
    if len(ne) != 3 or ne[2] != experts:
        raise ModelError(f"{path}: tensor {name} has shape {ne}, expected [columns, rows, {experts}]")
    raw = np.asarray(tensor.data).view(np.uint8)
    if raw.size % (experts * ne[1]) != 0:
        raise ModelError(f"{path}: tensor {name} ({type_name}) holds {raw.size} bytes, "
                         f"not a whole number of rows")
    data = raw.reshape(experts, ne[1], raw.size // (experts * ne[1]))
    return ExpertTensor(name, type_name, data)


def _check_shapes(path: Path, layer: MoeLayer, experts: int, hidden: int, intermediate: int) -> None:
    if layer.router.shape != (experts, hidden):
        raise ModelError(f"{path}: tensor blk.{layer.block}.ffn_gate_inp.weight has shape "
                         f"{list(layer.router.shape)[::-1]}, expected [{hidden}, {experts}]")
    for t, rows in ((layer.gate, intermediate), (layer.up, intermediate), (layer.down, hidden)):
        if t.data.shape[1] != rows:
            raise ModelError(f"{path}: tensor {t.name} has {t.data.shape[1]} rows per expert, expected {rows}")
