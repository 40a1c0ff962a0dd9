"""Findings of the paper as testable claims, each with a measured value, a 95% interval and a verdict.

A finding states that a measured quantity lies on one side of a threshold (``direction="greater"``: the claim
is ``value > threshold``; ``"less"``: ``value < threshold``). The verdict reads the interval, not the point:

* ``holds``           the whole interval is on the claimed side of the threshold;
* ``does not hold``   the whole interval is on the other side (or on the threshold);
* ``inconclusive``    the interval straddles the threshold, or the value is not finite.

A CKA-based finding also carries two checks (``vitcnn_tf.paper.measure_checks``):

* ``second_measure``: the same statistic with another similarity measure (orthogonal Procrustes) in place of
  CKA, ``{"measure", "value", "num_examples"}``. It *survives* when that value lies on the claimed side of the
  same threshold (a point estimate: no interval is computed for it).
* ``null``: the permutation null of the CKA quantity the finding compares, ``{"compared", "estimator", "value",
  "null_mean", "null_std", "null_q95", "p_value", "num_permutations", "num_examples"}``. It *clears* the null
  when ``value`` is above the null's 95th percentile ``null_q95``.

Both are None for a finding that rests on no similarity measure (``not checked``).
"""

import dataclasses
import math

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
SURVIVES, DOES_NOT_SURVIVE = "survives", "does not survive"
CLEARS, DOES_NOT_CLEAR = "clears", "does not clear"
NOT_CHECKED = "not checked"
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
      second_measure, null: the checks of a CKA finding (module docstring), or None.
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
    second_measure: dict | None = None
    null: dict | None = None

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

    @property
    def second_measure_verdict(self):
        """``"survives"`` when the second measure's value is on the claimed side of the threshold, ``"does not
        survive"`` when it is not (or not finite), ``"not checked"`` without a second measure."""
        if self.second_measure is None:
            return NOT_CHECKED
        value = _float(self.second_measure.get("value"))
        margin = value - self.threshold if self.direction == "greater" else self.threshold - value
        return SURVIVES if math.isfinite(value) and margin > 0 else DOES_NOT_SURVIVE

    @property
    def null_verdict(self):
        """``"clears"`` when the compared CKA value is above the null's 95th percentile, ``"does not clear"`` when
        it is not (or either is not finite), ``"not checked"`` without a null."""
        if self.null is None:
            return NOT_CHECKED
        value, level = _float(self.null.get("value")), _float(self.null.get("null_q95"))
        return CLEARS if math.isfinite(value) and math.isfinite(level) and value > level else DOES_NOT_CLEAR

    def to_dict(self):
        """JSON-able dict including the verdict; non-finite numbers become ``None``."""
        data = dataclasses.asdict(self)
        for name in ("value", "low", "high", "threshold"):
            if not math.isfinite(data[name]):
                data[name] = None
        data["verdict"] = self.verdict
        data["second_measure_verdict"] = self.second_measure_verdict
        data["null_verdict"] = self.null_verdict
        for name in ("second_measure", "null"):
            if data[name] is not None:
                data[name] = {key: (None if isinstance(v, float) and not math.isfinite(v) else v)
                              for key, v in data[name].items()}
        return data

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict` (the stored verdict is recomputed, not trusted)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (math.nan if v is None and k in ("value", "low", "high", "threshold") else v)
                  for k, v in data.items() if k in fields}
        return cls(**values)


def findings_table(findings):
    """A Markdown table of findings: section, claim, quantity, value [95% interval], verdict, and the checks of
    the CKA findings: the second measure's value and verdict, the CKA compared with its null level and verdict."""
    lines = ["| section | finding | quantity | value [95% CI] | verdict | second measure | CKA vs null q95 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for finding in findings:
        sign = ">" if finding.direction == "greater" else "<"
        value = f"{_number(finding.value)} [{_number(finding.low)}, {_number(finding.high)}]"
        lines.append(f"| {finding.section} | {finding.claim} | {finding.quantity} (claim: {sign} "
                     f"{_number(finding.threshold)}) | {value} | **{finding.verdict}** | "
                     f"{second_measure_text(finding)} | {null_text(finding)} |")
    return "\n".join(lines)


def second_measure_text(finding):
    """``"procrustes 0.42: survives"``, or ``"not checked"``."""
    if finding.second_measure is None:
        return NOT_CHECKED
    return (f"{finding.second_measure.get('measure', '')} {_number(_float(finding.second_measure.get('value')))}: "
            f"{finding.second_measure_verdict}")


def null_text(finding):
    """``"0.61 vs 0.05 (p 0.0099): clears"``, or ``"not checked"``."""
    if finding.null is None:
        return NOT_CHECKED
    null = finding.null
    return (f"{_number(_float(null.get('value')))} vs {_number(_float(null.get('null_q95')))} "
            f"(p {_number(_float(null.get('p_value')))}): {finding.null_verdict}")


def _float(value):
    return math.nan if value is None else float(value)


def _number(value):
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"
