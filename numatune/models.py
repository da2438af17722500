"""The model a user names: a GGUF file, or a model profile with a quantization ("deepseek-r1:Q4_K_M")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .profiles import ModelProfile, find_model_profile

DEFAULT_QUANTIZATION = "Q4_K_M"


@dataclass(frozen=True)
class ModelFootprint:
    """How much memory a model's weights take and how many bytes one token reads."""

    name: str
    source: str                       # file path or profile path
    weight_bytes: int
    bytes_per_token: int | None       # None when unknown (e.g. a GGUF without expert metadata)
    profile: ModelProfile | None = None
    quantization: str | None = None


def resolve_model(spec: str) -> ModelFootprint:
    if spec.endswith(".gguf") or Path(spec).is_file():
        return gguf_footprint(Path(spec))
    name, _, quant = spec.partition(":")
    profile = find_model_profile(name)
    quant = (quant or DEFAULT_QUANTIZATION).upper()
    return ModelFootprint(f"{profile.name}:{quant}", profile.source, profile.weight_bytes(quant),
                          profile.active_bytes_per_token(quant), profile, quant)


def gguf_footprint(path: Path) -> ModelFootprint:
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    try:
        import gguf
        reader = gguf.GGUFReader(str(path), "r")
        total = sum(int(t.n_bytes) for t in reader.tensors)
    except (ValueError, KeyError, IndexError, OSError, TypeError, OverflowError, MemoryError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a readable GGUF file ({detail})") from None
    from .gguf_moe import check_layout
    check_layout(path, reader)
    return ModelFootprint(path.name, str(path), total, None)
