"""Findings of the paper as testable claims, each with a measured value, a 95% interval and a verdict.

A finding states that a measured quantity lies on one side of a threshold (``direction="greater"``: the claim
is ``value > threshold``; ``"less"``: ``value < threshold``). The verdict reads the interval, not the point:

* ``holds``           the whole interval is on the claimed side of the threshold;
* ``does not hold``   the whole interval is on the other side (or on the threshold);
* ``inconclusive``    the interval straddles the threshold, or the value is not finite.

A CKA-based finding also carries two checks (``vitcnn_tf.paper.measure_checks``):

* ``second_measure``: the same statistic with another similarity measure (orthogonal Procrustes) in place of
  CKA, ``{"measure", "value", "num_examples"}``. It *survives* when that value lies on the claimed side of the
  claim's no-effect level (``vitcnn_tf.claims``; a point estimate: no interval is computed for it).
* ``null``: the permutation null of the CKA quantity the finding compares, ``{"compared", "estimator", "value",
  "null_mean", "null_std", "null_q95", "p_value", "num_permutations", "num_examples"}``. It *clears* the null
  when ``value`` is above the null's 95th percentile ``null_q95``.

Both are None for a finding that rests on no similarity measure (``not checked``).

Seeds and the control (:func:`pool_seeds`). A finding measured on models trained with several seeds is pooled: the
value is the mean over seeds, the interval a two-level bootstrap (seeds resampled, then examples within each
resampled seed), and ``seeds`` lists every seed's own value and interval. ``control`` is the same statistic on the
same architectures at initialisation (untrained weights), with its verdict against the same threshold. A finding
whose control holds says nothing about learning (:attr:`Finding.holds_at_initialisation`); for a claim about what
training produces (``vitcnn_tf.claims``), its value becomes the trained value minus the control's, against 0.
"""

import dataclasses
import math

import numpy as np

from vitcnn_tf import claims

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
      seeds: ``({"seed", "value", "low", "high"}, ...)`` of every trained seed behind a pooled finding (empty: one
        model set, not pooled).
      control: ``{"value", "low", "high", "threshold", "direction", "verdict", "quantity"}`` (and ``"models"``
        when the caller adds them): the statistic at initialisation, or None.
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
    seeds: tuple = ()
    control: dict | None = None

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Finding {self.key!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        for name in ("value", "low", "high", "threshold"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if math.isfinite(self.low) and math.isfinite(self.high) and self.low > self.high:
            raise ValueError(f"Finding {self.key!r}: interval low={self.low} is above high={self.high}")
        object.__setattr__(self, "seeds", tuple(dict(item) for item in self.seeds))

    @property
    def verdict(self):
        """``"holds"``, ``"does not hold"`` or ``"inconclusive"`` (see the module docstring)."""
        return interval_verdict(self.value, self.low, self.high, self.threshold, self.direction)

    @property
    def control_verdict(self):
        """The verdict of the statistic at initialisation against the same threshold, or ``"not checked"``."""
        if self.control is None:
            return NOT_CHECKED
        return interval_verdict(_float(self.control.get("value")), _float(self.control.get("low")),
                                _float(self.control.get("high")), _float(self.control.get("threshold")),
                                self.control.get("direction", self.direction))

    @property
    def holds_at_initialisation(self):
        """True when the claim already holds for the untrained control: the finding says nothing about learning."""
        return self.control_verdict == HOLDS

    @property
    def reason(self):
        """Why a finding that does not hold fails ("" when it holds): its unmet conditions when the statistic
        combines several (``detail["conditions"]``), else where its interval lies against the threshold."""
        verdict = self.verdict
        if verdict == HOLDS:
            return ""
        unmet = [item["text"] for item in self.detail.get("conditions", []) if not item.get("met", True)]
        if unmet:
            return "; ".join(unmet)
        if not all(math.isfinite(v) for v in (self.value, self.low, self.high)):
            return "the statistic could not be computed"
        sign = ">" if self.direction == "greater" else "<"
        where = "straddles" if verdict == INCONCLUSIVE else "is on the wrong side of"
        return (f"the interval [{_number(self.low)}, {_number(self.high)}] {where} the threshold "
                f"(claim: {sign} {_number(self.threshold)})")

    @property
    def second_measure_verdict(self):
        """``"survives"`` when the second measure's value lies beyond the claim's no-effect level
        (``vitcnn_tf.claims.Claim.no_effect``; the threshold for a finding without a claim) on the claimed side: the
        measure is on another scale than CKA, so it is asked for the effect's direction, not its size. ``"does not
        survive"`` when it does not (or is not finite), ``"not checked"`` without a second measure."""
        if self.second_measure is None:
            return NOT_CHECKED
        value = _float(self.second_measure.get("value"))
        level = claims.CLAIMS[self.key].no_effect if self.key in claims.CLAIMS else self.threshold
        margin = value - level if self.direction == "greater" else level - value
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
        data["control_verdict"] = self.control_verdict
        data["seeds"] = [{key: (None if isinstance(v, float) and not math.isfinite(v) else v)
                          for key, v in item.items()} for item in self.seeds]
        data["reason"] = self.reason
        for name in ("second_measure", "null", "control"):
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


def interval_verdict(value, low, high, threshold, direction):
    """``"holds"`` when ``[low, high]`` lies beyond ``threshold`` on the side of ``direction``, ``"does not
    hold"`` when it lies on the other side (or on the threshold), else (or with a non-finite number)
    ``"inconclusive"``."""
    if not all(math.isfinite(v) for v in (value, low, high, threshold)):
        return INCONCLUSIVE
    low, high = low - threshold, high - threshold
    if direction == "less":
        low, high = -high, -low
    if low > 0:
        return HOLDS
    if high <= 0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


_Z95 = 1.959963984540054


def pool_seeds(per_seed, *, control=None, learned=False, num_resamples=10000, confidence=0.95, seed=0):
    """One finding from the same finding measured on each trained seed's models, with its untrained control.

    Args:
      per_seed: ``{seed: Finding}`` (one key), every seed's value with its example-level interval.
      control: the same finding on the architectures at initialisation, or None.
      learned: the claim is about what training produces (``vitcnn_tf.claims.Claim.learned``): when the control
        holds, the pooled value becomes the trained value minus the control's, against 0.

    The value is the mean over seeds. The interval is a two-level percentile bootstrap: each resample draws the
    seeds with replacement, then one example-level estimate for each drawn seed, and averages them. A seed's
    example-level estimates are drawn from a normal with the seed's own bootstrap spread, ``(high - low) / (2 z)``
    (its interval is all a stage keeps of its resamples). With one seed the interval is that seed's. The other
    fields (quantity, detail, checks) are the first seed's; ``detail["interval"]`` says how the interval was made.
    """
    if not per_seed:
        raise ValueError("pool_seeds: expected at least one seed's finding")
    seeds = sorted(per_seed)
    findings = [per_seed[s] for s in seeds]
    first = findings[0]
    if any(finding.key != first.key for finding in findings) or (control is not None and control.key != first.key):
        raise ValueError(f"pool_seeds: findings of different keys {sorted({f.key for f in findings})}")
    if not 0 < confidence < 1:
        raise ValueError(f"pool_seeds: confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    values = np.array([finding.value for finding in findings])
    spreads = np.array([_spread(finding) for finding in findings])
    value = float(values.mean())
    if len(seeds) == 1:
        low, high = first.low, first.high
        replicates = value + spreads[0] * rng.standard_normal(num_resamples)
        interval = first.detail.get("interval", "bootstrap over examples") + " (one trained seed)"
    else:
        drawn = rng.integers(0, len(seeds), size=(num_resamples, len(seeds)))
        replicates = (values[drawn] + spreads[drawn] * rng.standard_normal(drawn.shape)).mean(axis=1)
        low, high = _percentiles(replicates, confidence)
        interval = (f"two-level bootstrap over {len(seeds)} trained seeds, then examples within each (each seed's "
                    "example-level spread from its own interval)")
    detail = {**first.detail, "interval": interval, "num_seeds": len(seeds)}
    fields = dict(value=value, low=low, high=high, detail=detail,
                  seeds=[{"seed": int(s), "value": f.value, "low": f.low, "high": f.high}
                         for s, f in zip(seeds, findings)])
    if control is not None:
        fields["control"] = {"value": control.value, "low": control.low, "high": control.high,
                             "threshold": control.threshold, "direction": control.direction,
                             "verdict": control.verdict, "quantity": control.quantity}
        if learned and control.verdict == HOLDS:
            control_draws = control.value + _spread(control) * rng.standard_normal(num_resamples)
            difference = replicates - control_draws
            d_low, d_high = _percentiles(difference, confidence)
            fields.update(value=value - control.value, low=d_low, high=d_high, threshold=0.0,
                          quantity=f"{first.quantity}; trained minus at initialisation (the claim holds at "
                                   "initialisation, so training must move it further)",
                          detail={**detail, "trained_value": value, "trained_interval": [low, high],
                                  "trained_threshold": first.threshold,
                                  "interval": interval + ", minus the control's estimate drawn the same way"})
    return dataclasses.replace(first, **fields)


def _spread(finding):
    """The example-level standard error of a finding, from its interval (0 when not finite)."""
    spread = (finding.high - finding.low) / (2 * _Z95)
    return spread if math.isfinite(spread) else 0.0


def _percentiles(replicates, confidence):
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def findings_table(findings):
    """A Markdown table of findings: section, claim, the statistic with its effect-size threshold, the pooled value
    [95% interval], every seed's value, the value at initialisation (the control) with its verdict, our verdict (with
    the reason when it does not hold), and the checks of the CKA findings: the second measure's value and verdict,
    the CKA compared with its null level and verdict."""
    lines = ["| section | finding | statistic (claim) | value [95% CI] | per seed | at initialisation | verdict | "
             "second measure | CKA vs null q95 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for finding in findings:
        sign = ">" if finding.direction == "greater" else "<"
        value = f"{_number(finding.value)} [{_number(finding.low)}, {_number(finding.high)}]"
        verdict = f"**{finding.verdict}**" + (f": {finding.reason}" if finding.reason else "")
        lines.append(f"| {finding.section} | {finding.claim} | {finding.quantity} (claim: {sign} "
                     f"{_number(finding.threshold)}) | {value} | {seeds_text(finding)} | {control_text(finding)} | "
                     f"{verdict} | {second_measure_text(finding)} | {null_text(finding)} |")
    return "\n".join(lines)


def seeds_text(finding):
    """``"s0 0.41 [0.39, 0.43]; s1 ..."``: every trained seed's value and example-level interval, or ``"-"``."""
    if not finding.seeds:
        return "-"
    return "; ".join(f"s{item['seed']} {_number(_float(item.get('value')))} [{_number(_float(item.get('low')))}, "
                     f"{_number(_float(item.get('high')))}]" for item in finding.seeds)


def control_text(finding):
    """``"0.12 [0.1, 0.14]: does not hold"`` for the control at initialisation, marked when the claim holds there
    (the finding then says nothing about learning); ``"not checked"`` without a control."""
    if finding.control is None:
        return NOT_CHECKED
    control = finding.control
    text = (f"{_number(_float(control.get('value')))} [{_number(_float(control.get('low')))}, "
            f"{_number(_float(control.get('high')))}]: {finding.control_verdict}")
    if finding.holds_at_initialisation:
        text += " (holds at initialisation: says nothing about learning"
        text += "; the value is trained minus initialisation)" if "trained_value" in finding.detail else ")"
    return text


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
