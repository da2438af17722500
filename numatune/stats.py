"""Repeated measurements: median with spread, and whether two of them differ beyond the noise."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Measurement:
    """A quantity measured several times. `samples` keeps the raw values, in order taken."""

    samples: tuple[float, ...]
    unit: str = ""

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Measurement needs at least one sample")

    @classmethod
    def of(cls, samples: Iterable[float], unit: str = "") -> "Measurement":
        return cls(tuple(float(s) for s in samples), unit)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def maximum(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """Half the interquartile range (half the full range below 4 samples): the noise band."""
        ordered = sorted(self.samples)
        if len(ordered) < 4:
            return (ordered[-1] - ordered[0]) / 2
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        return (q3 - q1) / 2

    @property
    def relative_spread(self) -> float:
        return self.spread / abs(self.median) if self.median else 0.0

    def ties_with(self, other: "Measurement") -> bool:
        """True when the medians differ by no more than the wider of the two noise bands: the
        difference is within the spread of either measurement."""
        return abs(self.median - other.median) <= max(self.spread, other.spread)

    def describe(self, digits: int = 2) -> str:
        return (f"{self.median:.{digits}f} ± {self.spread:.{digits}f} {self.unit}".rstrip()
                + f" (n={self.n}, {self.minimum:.{digits}f}…{self.maximum:.{digits}f})")

    def to_json(self) -> dict:
        return {"median": self.median, "spread": self.spread, "min": self.minimum,
                "max": self.maximum, "n": self.n, "unit": self.unit, "samples": list(self.samples)}

    @classmethod
    def from_json(cls, data: dict) -> "Measurement":
        return cls(tuple(float(s) for s in data["samples"]), data.get("unit", ""))
