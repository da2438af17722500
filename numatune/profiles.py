"""Loads and validates the YAML profiles: engines/ (targets), models/ (shapes), machines/ (servers).

Every problem is a ProfileError naming the file and the field, in one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ProfileError

# Installed, the YAML files are the package numatune.profiledata; in a source checkout they are
# profiles/ beside the package.
PROFILES_DIR = Path(__file__).resolve().parent / "profiledata"
if not PROFILES_DIR.is_dir():
    PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"

# Average bits per weight of common GGUF quantizations. Single types follow from their block
# layout (Q4_K: 144 bytes per 256 weights = 4.5; Q6_K: 210/256 = 6.5625; Q8_0: 34/32 = 8.5).
# Q4_K_M and Q5_K_M mix types (attention and some FFN tensors one level up, embeddings Q6_K);
# 4.85 and 5.7 are the averages of published DeepSeek/Qwen GGUF file sizes over parameters.
DEFAULT_BITS_PER_WEIGHT = {
    "Q4_K": 4.5, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q6_K": 6.5625, "Q8_0": 8.5,
    "F16": 16.0, "BF16": 16.0, "F32": 32.0,
}


@dataclass(frozen=True)
class ModelProfile:
    name: str
    aliases: tuple[str, ...]
    architecture: str
    layers: int
    moe_layers: int
    experts: int
    shared_experts: int
    top_k: int
    hidden: int
    expert_intermediate: int
    gating: str
    normalize_top_k: bool
    total_params: float
    active_params: float
    bits_per_weight: tuple[tuple[str, float], ...]
    source: str

    def weight_bytes(self, quantization: str) -> int:
        """Bytes of all weights at a quantization (what a GGUF of it occupies in memory)."""
        return int(self.total_params * self._bits(quantization) / 8)

    def active_bytes_per_token(self, quantization: str) -> int:
        """Weight bytes one decoded token reads (active parameters), at batch size 1."""
        return int(self.active_params * self._bits(quantization) / 8)

    def routed_expert_bytes(self, quantization: str) -> int:
        """Bytes of the routed experts alone (gate, up and down of every expert of every MoE layer)."""
        per_expert = 3 * self.hidden * self.expert_intermediate
        return int(self.moe_layers * self.experts * per_expert * self._bits(quantization) / 8)

    def _bits(self, quantization: str) -> float:
        table = dict(self.bits_per_weight)
        key = quantization.upper()
        if key not in table:
            raise ProfileError(f"model {self.name}: unknown quantization '{quantization}' "
                               f"(known: {', '.join(sorted(table))})")
        return table[key]


Check = Callable[[Any], bool]


def _field(data: dict, name: str, where: str, check: Check, expected: str, default: Any = ...) -> Any:
    if name not in data:
        if default is ...:
            raise ProfileError(f"{where}: field '{name}' is missing")
        return default
    value = data[name]
    if not check(value):
        raise ProfileError(f"{where}: field '{name}' must be {expected}, got {value!r}")
    return value


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(_text(x) for x in v)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{path}:{line} not valid YAML") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of fields at the top level")
    return data


def parse_model_profile(data: dict, where: str) -> ModelProfile:
    f = lambda name, check, expected, default=...: _field(data, name, where, check, expected, default)  # noqa: E731
    layers = f("layers", _positive_int, "an integer ≥ 1")
    moe_layers = f("moe_layers", _positive_int, "an integer ≥ 1")
    if moe_layers > layers:
        raise ProfileError(f"{where}: field 'moe_layers' ({moe_layers}) exceeds 'layers' ({layers})")
    experts = f("experts", _positive_int, "an integer ≥ 1")
    top_k = f("top_k", _positive_int, "an integer ≥ 1")
    if top_k > experts:
        raise ProfileError(f"{where}: field 'top_k' ({top_k}) exceeds 'experts' ({experts})")
    total = float(f("total_params", _positive_number, "a positive number"))
    active = float(f("active_params", _positive_number, "a positive number"))
    if active > total:
        raise ProfileError(f"{where}: field 'active_params' exceeds 'total_params'")
    extra_bits = f("bits_per_weight", lambda v: isinstance(v, dict) and all(
        _text(k) and _positive_number(x) for k, x in v.items()), "a mapping of quantization to bits", {})
    bits = dict(DEFAULT_BITS_PER_WEIGHT)
    bits.update({k.upper(): float(v) for k, v in extra_bits.items()})
    return ModelProfile(
        name=f("name", _text, "a non-empty string"),
        aliases=tuple(f("aliases", _str_list, "a list of names", [])),
        architecture=f("architecture", _text, "a non-empty string"),
        layers=layers, moe_layers=moe_layers, experts=experts,
        shared_experts=f("shared_experts", _count, "an integer ≥ 0", 0),
        top_k=top_k,
        hidden=f("hidden", _positive_int, "an integer ≥ 1"),
        expert_intermediate=f("expert_intermediate", _positive_int, "an integer ≥ 1"),
        gating=f("gating", lambda v: v in ("softmax", "sigmoid"), "'softmax' or 'sigmoid'"),
        normalize_top_k=f("normalize_top_k", lambda v: isinstance(v, bool), "true or false", True),
        total_params=total, active_params=active,
        bits_per_weight=tuple(sorted(bits.items())),
        source=where,
    )


def model_profiles(directory: Path | None = None) -> dict[str, ModelProfile]:
    directory = directory or PROFILES_DIR / "models"
    out: dict[str, ModelProfile] = {}
    for path in sorted(directory.glob("*.yaml")):
        profile = parse_model_profile(read_yaml(path), str(path))
        out[profile.name] = profile
    return out


def find_model_profile(name: str, directory: Path | None = None) -> ModelProfile:
    """A model profile by name or alias, case-insensitive; a quantization suffix is ignored."""
    profiles = model_profiles(directory)
    wanted = name.lower()
    for profile in profiles.values():
        if wanted == profile.name or wanted in (a.lower() for a in profile.aliases):
            return profile
    raise ProfileError(f"no model profile named '{name}' (known: {', '.join(sorted(profiles))})")
