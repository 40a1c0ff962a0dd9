"""Findings of the paper as testable claims, each with a measured value, a 95% interval and a verdict.

A finding states that a measured quantity lies on one side of a threshold (``direction="greater"``: the claim
is ``value > threshold``; ``"less"``: ``value < threshold``). The verdict reads the interval, not the point:

* ``holds``           the whole interval is on the claimed side of the threshold;
* ``does not hold``   the whole interval is on the other side (or on the threshold);
* ``inconclusive``    the interval straddles the threshold, or the value is not finite.
"""

import dataclasses
import math

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
DIRECTIONS = ("greater", "less")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One claim of the paper and what we measured for it.

    Attributes:
      key: stable identifier, e.g. ``"vit_uniform_similarity"``.
      section: the paper section, e.g. ``"4"``.
      claim: the paper's claim in one sentence.
      quantity: what was measured, in words precise enough to recompute it.
      value, low, high: the estimate and its interval (``low <= value <= high`` when all are finite).
      threshold, direction: the claim is ``value > threshold`` (``"greater"``) or ``value < threshold``.
      detail: free-form JSON-able context (models, example counts, seeds).
    """

    key: str
    section: str
    claim: str
    quantity: str
    value: float
    low: float
    high: float
    threshold: float = 0.0
    direction: str = "greater"
    detail: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Finding {self.key!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        for name in ("value", "low", "high", "threshold"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if math.isfinite(self.low) and math.isfinite(self.high) and self.low > self.high:
            raise ValueError(f"Finding {self.key!r}: interval low={self.low} is above high={self.high}")

    @property
    def verdict(self):
        """``"holds"``, ``"does not hold"`` or ``"inconclusive"`` (see the module docstring)."""
        if not all(math.isfinite(v) for v in (self.value, self.low, self.high)):
            return INCONCLUSIVE
        low, high = self.low - self.threshold, self.high - self.threshold
        if self.direction == "less":
            low, high = -high, -low
        if low > 0:
            return HOLDS
        if high <= 0:
            return DOES_NOT_HOLD
        return INCONCLUSIVE

    def to_dict(self):
        """JSON-able dict including the verdict; non-finite numbers become ``None``."""
        data = dataclasses.asdict(self)
        for name in ("value", "low", "high", "threshold"):
            if not math.isfinite(data[name]):
                data[name] = None
        data["verdict"] = self.verdict
        return data

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict` (the stored verdict is recomputed, not trusted)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (math.nan if v is None and k in ("value", "low", "high", "threshold") else v)
                  for k, v in data.items() if k in fields}
        return cls(**values)


def findings_table(findings):
    """A Markdown table of findings: section, claim, quantity, value [95% interval], verdict."""
    lines = ["| section | finding | quantity | value [95% CI] | verdict |", "| --- | --- | --- | --- | --- |"]
    for finding in findings:
        sign = ">" if finding.direction == "greater" else "<"
        value = f"{_number(finding.value)} [{_number(finding.low)}, {_number(finding.high)}]"
        lines.append(f"| {finding.section} | {finding.claim} | {finding.quantity} (claim: {sign} "
                     f"{_number(finding.threshold)}) | {value} | **{finding.verdict}** |")
    return "\n".join(lines)


def _number(value):
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"
