"""Reads the feed-forward layers of a GGUF file (memory-mapped): routers, routed experts, shared
experts and dense FFN layers, with the routing metadata of the architecture.

Tensors, per block N: `blk.N.ffn_gate_inp.weight` (router, experts × hidden),
`blk.N.exp_probs_b.bias` (DeepSeek's selection bias, optional),
`blk.N.ffn_{gate,up,down}_exps.weight` (experts stacked: gate/up experts × intermediate × hidden,
down experts × hidden × intermediate), `blk.N.ffn_{gate,up,down}_shexp.weight` (a shared expert,
computed for every token; qwen2moe gates its output by sigmoid(`blk.N.ffn_gate_inp_shexp.weight`·x)),
and in a dense block (DeepSeek's first `leading_dense_block_count`, Llama 4's non-MoE blocks)
`blk.N.ffn_{gate,up,down}.weight`. Attention, embeddings and the output head are not run, but
their bytes are counted in what a real decode step reads (`MoeModel.step_bytes_per_token`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

# GGML type numbers of the types the engine computes with.
SUPPORTED_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ1_S": 19, "IQ4_NL": 20, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30,
                   "IQ3_XXS": 18, "IQ3_S": 21, "IQ2_S": 22, "MXFP4": 39}
TYPE_NAMES = {number: name for name, number in SUPPORTED_TYPES.items()}

# How each architecture routes, as llama.cpp's graph for it builds it: gating, renormalise the
# top-k weights, the input (not the output) weighted (Llama 4), and whether the gating,
# normalisation and scale come from the file's metadata (DeepSeek) or are fixed by the graph.
@dataclass(frozen=True)
class _Arch:
    gating: str
    normalize: bool
    weight_before: bool = False
    from_metadata: bool = False


_ARCHITECTURES = {
    "deepseek2": _Arch("softmax", False, from_metadata=True),   # defaults of V2 files without the keys
    "qwen3moe": _Arch("softmax", True),
    "qwen2moe": _Arch("softmax", False),
    "llama": _Arch("softmax", True),        # Mixtral-style experts in a llama graph
    "mixtral": _Arch("softmax", True),
    "llama4": _Arch("sigmoid", False, weight_before=True),
}
_GATING_FUNCS = {1: "softmax", 2: "sigmoid"}     # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE
# Metadata of the feed-forward part that the reader understands; any other `{arch}.expert_*` or
# `{arch}.*moe*` key could change routing, and is refused rather than ignored.
_KNOWN_KEYS = {"expert_count", "expert_used_count", "expert_feed_forward_length",
               "expert_shared_feed_forward_length", "expert_shared_count", "expert_group_count",
               "expert_group_used_count", "expert_gating_func", "expert_weights_norm", "expert_weights_scale",
               "leading_dense_block_count", "interleave_moe_layer_step"}
_BLOCK = re.compile(r"^blk\.(\d+)\.ffn_(gate_exps|gate)\.weight$")
_EXPERT_TENSOR = re.compile(r"^blk\.\d+\.ffn_(gate|up|down)_exps\.weight$")


@dataclass(frozen=True)
class ExpertTensor:
    name: str
    type_name: str
    data: np.ndarray          # uint8 view of the mapped bytes: experts × rows × row_bytes


@dataclass(frozen=True)
class SharedFfn:
    """A feed-forward network computed for every token: a shared expert, or a dense block's FFN."""

    gate: ExpertTensor        # data: 1 × width × row_bytes
    up: ExpertTensor
    down: ExpertTensor        # data: 1 × hidden × row_bytes
    width: int
    gate_inp: np.ndarray | None = None    # qwen2moe: float32 hidden, its output × sigmoid(gate_inp·x)

    @property
    def nbytes(self) -> int:
        return sum(t.data.nbytes for t in (self.gate, self.up, self.down)) + \
            (self.gate_inp.nbytes if self.gate_inp is not None else 0)


@dataclass(frozen=True)
class MoeLayer:
    block: int
    router: np.ndarray | None         # float32, experts × hidden; None in a dense block
    router_bias: np.ndarray | None
    gate: ExpertTensor | None
    up: ExpertTensor | None
    down: ExpertTensor | None
    shared: SharedFfn | None = None   # the shared expert, or a dense block's FFN

    @property
    def dense(self) -> bool:
        return self.router is None


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
    layers: tuple[MoeLayer, ...]      # every block with a feed-forward network, dense ones included
    groups: int = 1
    groups_used: int = 1
    weight_before: bool = False       # Llama 4: the chosen expert's input is scaled by its weight
    step_bytes_per_token: int = 0     # weight bytes a real decode step reads (all tensors of the file)

    @property
    def moe_layers(self) -> tuple[MoeLayer, ...]:
        return tuple(layer for layer in self.layers if not layer.dense)

    @property
    def expert_bytes(self) -> int:
        """Bytes of all routed experts of all layers (one copy)."""
        return sum(t.data.nbytes for layer in self.moe_layers for t in (layer.gate, layer.up, layer.down))

    @property
    def shared_bytes(self) -> int:
        """Bytes of the shared experts and dense FFNs, computed for every token."""
        return sum(layer.shared.nbytes for layer in self.layers if layer.shared is not None)

    @property
    def placed_bytes(self) -> int:
        """What the engine places in memory: routed experts, shared experts and dense FFNs."""
        return self.expert_bytes + self.shared_bytes

    @property
    def router_bytes(self) -> int:
        return sum(layer.router.nbytes for layer in self.moe_layers)

    @property
    def executed_bytes_per_token(self) -> int:
        """Weight bytes of the file the engine reads per token: routers (and selection biases),
        the top-k share of the routed experts, shared experts and dense FFNs."""
        routed = self.expert_bytes * self.top_k // self.experts if self.experts else 0
        biases = sum(layer.router_bias.nbytes for layer in self.moe_layers if layer.router_bias is not None)
        return routed + self.router_bytes + biases + self.shared_bytes

    @property
    def executed_share(self) -> float:
        """Share of a real decode step's weight bytes that the engine executes."""
        return self.executed_bytes_per_token / self.step_bytes_per_token if self.step_bytes_per_token else 1.0


def model_architecture(path: str | Path) -> str | None:
    """The file's `general.architecture`, without reading its tensors' layout."""
    path = Path(path)
    return _meta(_open(path, check=False), path, "general.architecture", str, None)


def read_moe_model(path: str | Path) -> MoeModel:
    path = Path(path)
    reader = _open(path)
    arch = _meta(reader, path, "general.architecture", str)
    if arch not in _ARCHITECTURES:
        raise ModelError(f"{path}: architecture '{arch}' is not supported "
                         f"(supported: {', '.join(sorted(_ARCHITECTURES))})")
    _refuse_unknown_keys(reader, path, arch)
    tensors = {t.name: t for t in reader.tensors}
    blocks = sorted({int(m.group(1)) for name in tensors if (m := _BLOCK.match(name))})
    if not any(f"blk.{b}.ffn_gate_exps.weight" in tensors for b in blocks):
        raise ModelError(f"{path}: no routed-expert tensors (blk.N.ffn_gate_exps.weight) in this file")
    experts = _meta(reader, path, f"{arch}.expert_count", int)
    if experts < 1:
        raise ModelError(f"{path}: {arch}.expert_count = {experts}, a MoE model has at least one expert")
    top_k = _meta(reader, path, f"{arch}.expert_used_count", int)
    if experts < 1 or not 1 <= top_k <= experts:
        raise ModelError(f"{path}: metadata {arch}.expert_used_count = {top_k} is outside 1..{experts} "
                         f"({arch}.expert_count)")
    gating, normalize, scale = _routing(reader, path, arch)
    groups, groups_used = _groups(reader, path, arch, experts, top_k)
    weight_before = _ARCHITECTURES[arch].weight_before
    if weight_before and top_k != 1:
        raise ModelError(f"{path}: metadata {arch}.expert_used_count = {top_k}: the engine weights a Llama 4 "
                         f"expert's input only for top-1 routing (Llama 4 routes to one expert)")
    layers = tuple(_layer(path, tensors, block, experts) for block in blocks)
    first = next(layer for layer in layers if not layer.dense)
    hidden, intermediate = first.router.shape[1], first.gate.data.shape[1]
    for layer in layers:
        _check_shapes(path, layer, experts, hidden, intermediate)
    return MoeModel(str(path), arch, hidden, intermediate, experts, top_k, gating, normalize, scale, layers,
                    groups, groups_used, weight_before, _step_bytes(reader, tensors, arch, top_k, experts))


def _refuse_unknown_keys(reader, path: Path, arch: str) -> None:
    for key in reader.fields:
        if not key.startswith(arch + "."):
            continue
        name = key[len(arch) + 1:]
        if (name.startswith("expert_") or "moe" in name) and name not in _KNOWN_KEYS:
            raise ModelError(f"{path}: metadata '{key}' may change how experts are routed and the engine "
                             f"does not implement it; refusing rather than running a different model")


def _routing(reader, path: Path, arch: str) -> tuple[str, bool, float]:
    """(gating, renormalise, scale): from the file for deepseek2; fixed by the graph of the
    others, where a key that says otherwise is refused (llama.cpp would ignore it)."""
    spec = _ARCHITECTURES[arch]
    func_key, norm_key, scale_key = (f"{arch}.expert_gating_func", f"{arch}.expert_weights_norm",
                                     f"{arch}.expert_weights_scale")
    func = _meta(reader, path, func_key, int, 0)
    if func not in (0, *_GATING_FUNCS):
        raise ModelError(f"{path}: metadata {func_key} = {func} is a gating function the engine does not "
                         f"implement (1 softmax, 2 sigmoid)")
    normalize = _meta(reader, path, norm_key, bool, None)
    scale = _meta(reader, path, scale_key, float, None)
    if spec.from_metadata:
        gating = _GATING_FUNCS.get(func, spec.gating)
        # llama.cpp skips a scale of 0 (an unset key) like a scale of 1.
        return gating, spec.normalize if normalize is None else normalize, scale if scale else 1.0
    for key, value, fixed in ((func_key, _GATING_FUNCS.get(func), spec.gating), (norm_key, normalize, spec.normalize),
                              (scale_key, scale, 1.0)):
        if value is not None and value != fixed:
            raise ModelError(f"{path}: metadata {key} = {value!r}, but {arch} routes with {fixed!r} "
                             f"(llama.cpp's {arch} graph ignores the key); refusing rather than guessing")
    return spec.gating, spec.normalize, 1.0


def _groups(reader, path: Path, arch: str, experts: int, top_k: int) -> tuple[int, int]:
    count_key, used_key = f"{arch}.expert_group_count", f"{arch}.expert_group_used_count"
    groups = _meta(reader, path, count_key, int, 1) or 1
    used = _meta(reader, path, used_key, int, groups) or groups
    if groups < 1 or experts % groups:
        raise ModelError(f"{path}: metadata {count_key} = {groups} does not divide {arch}.expert_count = {experts}")
    if not 1 <= used <= groups:
        raise ModelError(f"{path}: metadata {used_key} = {used} is outside 1..{groups} ({count_key})")
    if used * (experts // groups) < top_k:
        raise ModelError(f"{path}: metadata {used_key} = {used} leaves {used * (experts // groups)} eligible "
                         f"experts, fewer than {arch}.expert_used_count = {top_k}")
    return groups, used


def _step_bytes(reader, tensors: dict, arch: str, top_k: int, experts: int) -> int:
    """Weight bytes one decode step reads in a runtime that runs the whole file: every tensor
    once, the routed experts' top-k share, one row of the token embeddings (all of it when it
    is also the output head), and nothing of the multi-token-prediction blocks llama.cpp skips."""
    blocks = int(reader.get_field(f"{arch}.block_count").contents()) if reader.get_field(f"{arch}.block_count") else None
    nextn_field = reader.get_field(f"{arch}.nextn_predict_layers")
    first_skipped = blocks - int(nextn_field.contents()) if blocks is not None and nextn_field is not None else None
    total = 0
    for name, tensor in tensors.items():
        size = int(tensor.n_bytes)
        block = re.match(r"^blk\.(\d+)\.", name)
        if first_skipped is not None and block and int(block.group(1)) >= first_skipped:
            continue
        if _EXPERT_TENSOR.match(name):
            total += size * top_k // experts
        elif name == "token_embd.weight" and "output.weight" in tensors:
            total += size // max(1, int(tensor.shape[-1]))
        else:
            total += size
    return total


def _open(path: Path, check: bool = True):
    """The file's reader; `check`: its tensors' offsets are checked too."""
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    import gguf
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, KeyError, IndexError, OSError, TypeError, OverflowError, MemoryError) as exc:
        _refuse_block_misfit(path)
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a readable GGUF file ({detail})") from None
    if check:
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


# Bytes of a metadata value of each GGUF value type (8 string, 9 array: variable).
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _refuse_block_misfit(path: Path) -> None:
    """When gguf cannot read a file, names a tensor whose type and shape disagree (a row that is
    not a whole number of the type's blocks), which gguf reports without the tensor's name."""
    import mmap
    import struct
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    try:
        # mapped, not read: the header is all this looks at, and the file may be hundreds of GB
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"GGUF":
                return
            at = 8
            def take(fmt: str):
                nonlocal at
                values = struct.unpack_from("<" + fmt, data, at)
                at += struct.calcsize("<" + fmt)
                return values[0]
            def skip_value(kind: int) -> None:
                nonlocal at
                if kind == 8:
                    length = take("Q")
                    at += length
                elif kind == 9:
                    inner, count = take("I"), take("Q")
                    if inner in _SCALAR_BYTES:      # one step, however large the count
                        at += count * _SCALAR_BYTES[inner]
                    else:
                        for _ in range(count):
                            skip_value(inner)
                else:
                    at += _SCALAR_BYTES[kind]
            tensors, kvs = take("Q"), take("Q")
            for _ in range(kvs):
                length = take("Q")
                at += length
                skip_value(take("I"))
            for _ in range(tensors):
                length = take("Q")
                name = data[at:at + length].decode()
                at += length
                shape = [take("Q") for _ in range(take("I"))]
                kind = take("I")
                at += 8
                weights = GGML_QUANT_SIZES.get(GGMLQuantizationType(kind), (1, 1))[0]
                if shape and shape[0] % weights:
                    raise ModelError(f"{path}: tensor {name} has type {GGMLQuantizationType(kind).name} and shape "
                                     f"{shape}: its {shape[0]} columns are not a whole number of {weights}-weight blocks")
    except (struct.error, KeyError, ValueError, UnicodeDecodeError, OSError, OverflowError, IndexError,
            MemoryError, RecursionError):
        return            # the header is broken some other way: the caller's one-line error says so


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
    if prefix + "ffn_gate_exps.weight" not in tensors:      # a dense block
        return MoeLayer(block, None, None, None, None, None, _shared(path, tensors, prefix, ""))
    router = _tensor(path, tensors, prefix + "ffn_gate_inp.weight")
    router_f32 = _to_float32(path, router)
    bias = tensors.get(prefix + "exp_probs_b.bias")
    shared = _shared(path, tensors, prefix, "_shexp") if prefix + "ffn_gate_shexp.weight" in tensors else None
    return MoeLayer(
        block=block,
        router=router_f32.reshape(experts, -1) if router_f32.size % experts == 0 else router_f32,
        router_bias=_to_float32(path, bias).reshape(-1) if bias is not None else None,
        gate=_experts(path, tensors, prefix + "ffn_gate_exps.weight", experts),
        up=_experts(path, tensors, prefix + "ffn_up_exps.weight", experts),
        down=_experts(path, tensors, prefix + "ffn_down_exps.weight", experts),
        shared=shared,
    )


def _shared(path: Path, tensors: dict, prefix: str, suffix: str) -> SharedFfn:
    """`ffn_{gate,up,down}{suffix}.weight` as one FFN (a shared expert, or a dense block's)."""
    gate, up, down = (_experts(path, tensors, f"{prefix}ffn_{part}{suffix}.weight", 1) for part in ("gate", "up", "down"))
    gate_inp = tensors.get(f"{prefix}ffn_gate_inp{suffix}.weight") if suffix else None
    vector = None
    if gate_inp is not None:
        hidden = int(gate_inp.shape[0])
        if [int(n) for n in gate_inp.shape if int(n) != 1] != [hidden]:
            raise ModelError(f"{path}: tensor {gate_inp.name} has shape {[int(n) for n in gate_inp.shape]}, "
                             f"expected [hidden] (one gate value for the shared expert)")
        vector = _to_float32(path, gate_inp).reshape(-1)
    return SharedFfn(gate, up, down, gate.data.shape[1], vector)


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
    """A stack of `experts` matrices (GGUF shape [columns, rows, experts]; a single FFN's
    tensor, [columns, rows], is a stack of one), its bytes checked against its type and shape."""
    from .quants import block_size
    tensor = _tensor(path, tensors, name)
    type_name = _type_name(path, tensor)
    ne = [int(n) for n in tensor.shape]              # GGUF order: columns, rows, experts
    if len(ne) not in (2, 3) or (len(ne) == 3 and ne[2] != experts) or (len(ne) == 2 and experts != 1):
        shape = "[columns, rows]" if experts == 1 else f"[columns, rows, {experts}]"
        raise ModelError(f"{path}: tensor {name} has shape {ne}, expected {shape}")
    weights_per_block, bytes_per_block = block_size(type_name)
    if ne[0] % weights_per_block:
        raise ModelError(f"{path}: tensor {name} has type {type_name} and shape {ne}: its {ne[0]} columns "
                         f"are not a whole number of {weights_per_block}-weight blocks")
    rows = ne[1]
    raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
    row = ne[0] // weights_per_block * bytes_per_block
    if raw.size != experts * rows * row:
        raise ModelError(f"{path}: tensor {name} ({type_name}, shape {ne}) holds {raw.size} bytes, "
                         f"its type and shape need {experts * rows * row}")
    return ExpertTensor(name, type_name, raw.reshape(experts, rows, row))


def _check_shapes(path: Path, layer: MoeLayer, experts: int, hidden: int, intermediate: int) -> None:
    if not layer.dense:
        if layer.router.shape != (experts, hidden):
            raise ModelError(f"{path}: tensor blk.{layer.block}.ffn_gate_inp.weight has shape "
                             f"{list(layer.router.shape)[::-1]}, expected [{hidden}, {experts}]")
        if layer.router_bias is not None and layer.router_bias.shape != (experts,):
            raise ModelError(f"{path}: tensor blk.{layer.block}.exp_probs_b.bias has {layer.router_bias.size} "
                             f"values, expected {experts} (one per expert)")
        for t, rows, cols in ((layer.gate, intermediate, hidden), (layer.up, intermediate, hidden),
                              (layer.down, hidden, intermediate)):
            _check_matrix(path, t, rows, cols)
    if layer.shared is not None:
        width = layer.shared.width
        for t, rows, cols in ((layer.shared.gate, width, hidden), (layer.shared.up, width, hidden),
                              (layer.shared.down, hidden, width)):
            _check_matrix(path, t, rows, cols)
        gate_inp = layer.shared.gate_inp
        if gate_inp is not None and gate_inp.shape != (hidden,):
            raise ModelError(f"{path}: tensor blk.{layer.block}.ffn_gate_inp_shexp.weight has {gate_inp.size} "
                             f"values, expected {hidden} (hidden)")


def _check_matrix(path: Path, t: ExpertTensor, rows: int, cols: int) -> None:
    from .quants import block_size
    weights, nbytes = block_size(t.type_name)
    have_cols = t.data.shape[2] // nbytes * weights
    if (t.data.shape[1], have_cols) != (rows, cols):
        raise ModelError(f"{path}: tensor {t.name} has shape [{have_cols}, {t.data.shape[1]}] per matrix, "
                         f"expected [{cols}, {rows}]")
