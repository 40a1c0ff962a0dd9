"""Skip-connection norm ratios ``||z|| / ||f(z)||`` (Section 6, Figure 7).

A residual unit computes ``z + f(z)``: ``z`` comes through the skip connection, ``f(z)`` through the long branch
(self-attention or MLP in ViT, token or channel mixing in Mixer, the bottleneck branch of a ResNetV2 unit). A
ratio above 1 means the skip path dominates the unit's output.

Residual units are ``model.residual_taps`` (``[(skip input tap, branch tap, sum tap)]``, our ViT and Mixer;
blocks whose skips were removed are not listed) when the model has it, otherwise they are found from the tap names:
a tap ``<unit>/+<kind>`` is the sum, ``<unit>/<kind>`` or else ``<unit>/branch`` (ResNetV2) is ``f(z)``, and
``<unit>/skip`` is ``z`` when tapped (the ResNetV2 shortcut, possibly a projection), otherwise
``z = sum - f(z)`` (exact up to the float32 rounding of the sum).

Norms are Euclidean over the feature (last) axis, per example and per token (a token is a sequence position, or
a spatial position of a feature map ``[n, h, w, c]``), and averaged over the examples; every ratio is a ratio of
such mean norms. A branch whose mean norm is 0 (e.g. zero-initialised) gives ``inf`` (never NaN).
"""

import numpy as np

from vitcnn_tf import representations
from vitcnn_tf.analysis import tokens as token_layout
from vitcnn_tf.data import elements


def residual_units_from_names(layer_names):
    """``[(skip tap or None, branch tap, sum tap), ...]`` in forward order from tap names (the naming rule above)."""
    names = set(layer_names)
    units = []
    for name in layer_names:
        unit, _, last = name.rpartition("/")
        if not unit or not last.startswith("+"):
            continue
        branch = next((f"{unit}/{c}" for c in (last[1:], "branch") if f"{unit}/{c}" in names), None)
        if branch is None:
            raise ValueError(
                f"tap {name!r} is a residual sum but neither {unit}/{last[1:]} nor {unit}/branch is tapped"
            )
        units.append((f"{unit}/skip" if f"{unit}/skip" in names else None, branch, name))
    return units


def residual_units(model):
    """``[(skip tap or None, branch tap, sum tap), ...]`` of ``model``: ``model.residual_taps`` if it has them,
    else ``residual_units_from_names`` of its taps."""
    if hasattr(model, "residual_taps"):
        return [tuple(unit) for unit in model.residual_taps]
    return residual_units_from_names(representations.layer_names(model))


def _token_norms(array, name):
    """``[n, ..., d]`` -> ``[n, tokens]`` Euclidean norms over the last axis (``[n, d]`` is one token)."""
    array = token_layout.as_float64(array, name)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [n, ..., d] array, got shape {array.shape}")
    token_layout.check_finite(array, name)
    return np.linalg.norm(array.reshape(array.shape[0], -1, array.shape[-1]), axis=-1)


def _ratio(skip_norm, branch_norm, unit):
    """``skip_norm / branch_norm`` elementwise with ``x / 0 = inf`` for ``x > 0``; ``0 / 0`` is an error."""
    skip_norm, branch_norm = np.asarray(skip_norm), np.asarray(branch_norm)
    if np.any((skip_norm == 0) & (branch_norm == 0)):
        raise ValueError(f"{unit}: both the skip and the branch representation are zero; the norm ratio is undefined")
    with np.errstate(divide="ignore"):
        ratio = np.where(branch_norm > 0, skip_norm / np.where(branch_norm > 0, branch_norm, 1.0), np.inf)
    return float(ratio) if ratio.ndim == 0 else ratio


class NormRatioAccumulator:
    """Sums per-token norms of ``z`` and ``f(z)`` over batches for residual ``units``.

    ``units``: ``[(skip tap or None, branch tap, sum tap), ...]`` (``residual_units``). ``update(taps)`` takes
    ``{tap name: [n, ..., d] array}`` of one batch (at least the taps of every unit); ``result()`` returns the dict
    described in ``norm_ratios``. ``num_prefix_tokens`` counts the CLS tokens of token taps ``[n, T, d]``
    (feature maps have none).
    """

    def __init__(self, units, num_prefix_tokens=0):
        self.units = [tuple(unit) for unit in units]
        if not self.units:
            raise ValueError("NormRatioAccumulator: no residual units given")
        self.num_prefix_tokens = num_prefix_tokens
        self.reset()

    def reset(self):
        self.num_examples = 0
        self._skip_sums = {}
        self._branch_sums = {}
        self._ranks = {}

    def update(self, taps):
        """Add one batch: ``taps`` maps every needed tap name to its ``[n, ..., d]`` value. Returns the batch's
        float64 token norms ``{sum tap: (skip norms [n, tokens], branch norms [n, tokens])}``."""
        batch_sizes, norms = set(), {}
        for skip_tap, branch_tap, sum_tap in self.units:
            missing = [name for name in (sum_tap, branch_tap, skip_tap) if name is not None and name not in taps]
            if missing:
                raise KeyError(f"taps: missing {missing} needed for the residual unit {sum_tap!r}")
            branch = token_layout.as_float64(taps[branch_tap], branch_tap)
            if skip_tap is not None:
                skip = token_layout.as_float64(taps[skip_tap], skip_tap)
            else:
                skip = token_layout.as_float64(taps[sum_tap], sum_tap) - branch
            if skip.shape != branch.shape:
                raise ValueError(f"{sum_tap}: skip shape {skip.shape} differs from branch shape {branch.shape}")
            skip_norms, branch_norms = _token_norms(skip, f"{sum_tap} skip"), _token_norms(branch, branch_tap)
            norms[sum_tap] = skip_norms, branch_norms
            batch_sizes.add(len(branch_norms))
            self._skip_sums[sum_tap] = self._skip_sums.get(sum_tap, 0.0) + skip_norms.sum(axis=0)
            self._branch_sums[sum_tap] = self._branch_sums.get(sum_tap, 0.0) + branch_norms.sum(axis=0)
            self._ranks[sum_tap] = branch.ndim
        if len(batch_sizes) != 1:
            raise ValueError(f"taps: the residual units have different batch sizes {sorted(batch_sizes)}")
        self.num_examples += batch_sizes.pop()
        return norms

    def result(self):
        """``{sum tap: {...}}`` per residual unit in forward order (see ``norm_ratios``)."""
        if not self.num_examples:
            raise ValueError("NormRatioAccumulator: no batch added yet (call update first)")
        results = {}
        for skip_tap, branch_tap, sum_tap in self.units:
            skip_norm = self._skip_sums[sum_tap] / self.num_examples
            branch_norm = self._branch_sums[sum_tap] / self.num_examples
            prefix = self.num_prefix_tokens if self._ranks[sum_tap] == 3 else 0
            if prefix >= len(skip_norm):
                raise ValueError(f"{sum_tap}: {len(skip_norm)} token(s) cannot hold {prefix} prefix token(s)")
            results[sum_tap] = {
                "kind": sum_tap.rpartition("/")[2].lstrip("+"),
                "branch_tap": branch_tap,
                "skip_tap": skip_tap,
                "skip_norm": skip_norm,
                "branch_norm": branch_norm,
                "ratio_per_token": _ratio(skip_norm, branch_norm, sum_tap),
                "ratio": _ratio(skip_norm.mean(), branch_norm.mean(), sum_tap),
                "ratio_spatial": _ratio(skip_norm[prefix:].mean(), branch_norm[prefix:].mean(), sum_tap),
                "ratio_cls": (
                    _ratio(skip_norm[:prefix].mean(), branch_norm[:prefix].mean(), sum_tap) if prefix else None
                ),
            }
        return results


def _image_batches(images_or_dataset, batch_size):
    """Yield image batches from an ``[n, H, W, C]`` array or an iterable of batches (``images``,
    ``(images, labels, ...)`` tuples or dicts with an ``"image"``/``"images"`` entry, e.g. a ``tf.data.Dataset``)."""
    if hasattr(images_or_dataset, "shape") and len(images_or_dataset.shape) == 4:
        images = token_layout.as_array(images_or_dataset)
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for element in images_or_dataset:
        yield elements.element_images(element, "images")


def norm_ratios(model, images, batch_size=64, num_prefix_tokens=None):
    """Norm ratios ``||z|| / ||f(z)||`` of every residual unit of ``model`` over ``images``.

    ``images``: ``[n, H, W, C]`` (processed ``batch_size`` at a time) or an iterable of image batches (a
    ``tf.data.Dataset`` of images or of ``(images, labels)``). ``num_prefix_tokens``: CLS tokens of token taps,
    default from ``model.config`` (see ``tokens.infer_num_prefix_tokens``).

    Returns ``{sum tap: entry}`` in forward order, e.g. ``"block03/+sa"``, ``"block2/unit01/+res"``, where each
    entry has ``kind`` (``"sa"``, ``"mlp"``, ``"res"``, ...), ``branch_tap``, ``skip_tap`` (None: ``z`` taken as
    ``sum - f(z)``), ``skip_norm`` / ``branch_norm`` ``[tokens]`` mean norms, ``ratio_per_token`` ``[tokens]``,
    ``ratio`` (over all tokens), ``ratio_spatial`` (non-prefix tokens) and ``ratio_cls`` (prefix tokens, None
    without them); ratios are ratios of mean norms, ``inf`` for a zero branch.
    """
    units = residual_units(model)
    if not units:
        taps = representations.layer_names(model)
        raise ValueError(f"model {model.name!r} has no residual units; its taps are {taps}")
    needed = list(dict.fromkeys(name for unit in units for name in unit if name is not None))
    accumulator = None
    for batch in _image_batches(images, batch_size):
        values = representations.extract(model, batch, layers=needed)
        if accumulator is None:
            if num_prefix_tokens is None:
                token_counts = [value.shape[1] for value in values.values() if value.ndim == 3]
                num_prefix_tokens = (
                    token_layout.infer_num_prefix_tokens(model, token_counts[0]) if token_counts else 0
                )
            accumulator = NormRatioAccumulator(units, num_prefix_tokens)
        accumulator.update(values)
    if accumulator is None:
        raise ValueError("images: no examples given")
    return accumulator.result()
