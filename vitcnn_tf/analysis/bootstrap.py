"""Bootstrap confidence intervals (percentile method) for the findings table of the reproduction report.

``bootstrap_interval`` resamples examples with replacement: every array passed shares its first axis (the
examples) and is resampled with the same indices, so paired quantities stay paired. ``bootstrap_interval_over_seeds``
is the two-level version for models trained with several seeds: seeds are resampled, then examples within each
resampled seed, and the statistic is averaged over the seeds of a resample. ``cka_bootstrap_interval`` and
``cka_bootstrap_interval_over_seeds`` do the same for CKA statistics, resampling minibatches of HSIC terms.
"""

import numpy as np

from vitcnn_tf.analysis import tokens as token_layout


def _check_interval_settings(num_resamples, confidence):
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 2:
        raise ValueError(f"num_resamples: expected an int >= 2, got {num_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")


def _check_paired_arrays(arrays, name):
    """Arrays (NumPy or TF) sharing a first axis of length ``n >= 2``; returns ``(arrays, n)``."""
    if not arrays:
        raise ValueError(f"{name}: expected at least one array of examples")
    arrays = [token_layout.as_array(array) for array in arrays]
    lengths = [array.shape[0] if array.ndim else None for array in arrays]
    if None in lengths or len(set(lengths)) != 1:
        raise ValueError(
            f"{name}: every array must have the same first (example) axis, got shapes {[a.shape for a in arrays]}"
        )
    if lengths[0] < 2:
        raise ValueError(f"{name}: at least 2 examples are needed to resample, got {lengths[0]}")
    return arrays, lengths[0]


def _evaluate(statistic_fn, arrays):
    """``statistic_fn(*arrays)`` as a finite float64 array (a scalar or any fixed shape)."""
    value = token_layout.as_float64(statistic_fn(*arrays), "statistic_fn output")
    token_layout.check_finite(value, "statistic_fn output")
    return value


def _percentile_interval(estimate, replicates, confidence):
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(np.stack(replicates), [tail, 100.0 - tail], axis=0)
    if estimate.ndim == 0:
        return float(estimate), float(low), float(high)
    return estimate, low, high


def bootstrap_interval(
    statistic_fn, *arrays, num_resamples=1000, confidence=0.95, seed=0, vectorized=False, resamples_per_call=100
):
    """``(estimate, low, high)``: ``statistic_fn(*arrays)`` on the data and its percentile bootstrap interval.

    ``arrays``: one or more ``[n, ...]`` arrays resampled together along the first axis. ``statistic_fn`` returns a
    scalar (then floats are returned) or an array of fixed shape (then arrays, the interval taken elementwise).
    With ``vectorized=True``, ``statistic_fn`` is called on ``resamples_per_call`` resamples at once, as arrays
    ``[r, n, ...]``, and must return ``[r, ...]`` (e.g. ``lambda x: x.mean(axis=1)``); the estimate is then
    ``statistic_fn`` of the data with a leading axis of 1. Both modes draw the same resamples for the same seed.
    """
    _check_interval_settings(num_resamples, confidence)
    arrays, n = _check_paired_arrays(arrays, "bootstrap_interval")
    rng = np.random.default_rng(seed)
    if not vectorized:
        estimate = _evaluate(statistic_fn, arrays)
        replicates = []
        for _ in range(num_resamples):
            chosen = rng.integers(0, n, size=n)
            replicates.append(_evaluate(statistic_fn, [array[chosen] for array in arrays]))
        return _percentile_interval(estimate, replicates, confidence)
    estimate = _evaluate(statistic_fn, [array[None] for array in arrays])
    if estimate.ndim == 0 or estimate.shape[0] != 1:
        raise ValueError(
            f"statistic_fn: with vectorized=True it must return [r, ...] for r resamples, got shape {estimate.shape} "
            "for r = 1"
        )
    replicates = []
    for start in range(0, num_resamples, resamples_per_call):
        count = min(resamples_per_call, num_resamples - start)
        chosen = rng.integers(0, n, size=(count, n))
        values = _evaluate(statistic_fn, [array[chosen] for array in arrays])
        if values.shape[:1] != (count,):
            raise ValueError(f"statistic_fn: expected {count} values along axis 0, got shape {values.shape}")
        replicates.extend(values)
    return _percentile_interval(estimate[0], replicates, confidence)


def bootstrap_interval_over_seeds(statistic_fn, arrays_per_seed, num_resamples=1000, confidence=0.95, seed=0):
    """``(estimate, low, high)`` over several trained seeds: the estimate is the mean over seeds of
    ``statistic_fn(*arrays)``; each bootstrap replicate resamples the seeds with replacement and, within every
    drawn seed, its examples, then averages the statistic over the drawn seeds.

    ``arrays_per_seed``: a sequence over seeds (at least 2) of tuples of ``[n_s, ...]`` arrays (as
    ``bootstrap_interval``'s ``arrays``; ``n_s`` may differ between seeds). With one seed use
    ``bootstrap_interval``.
    """
    _check_interval_settings(num_resamples, confidence)
    if len(arrays_per_seed) < 2:
        raise ValueError(
            f"arrays_per_seed: expected at least 2 seeds, got {len(arrays_per_seed)}; use bootstrap_interval"
        )
    per_seed = [
        _check_paired_arrays(tuple(arrays), f"arrays_per_seed[{index}]") for index, arrays in enumerate(arrays_per_seed)
    ]
    estimate = np.mean([_evaluate(statistic_fn, arrays) for arrays, _ in per_seed], axis=0)
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(num_resamples):
        values = []
        for seed_index in rng.integers(0, len(per_seed), size=len(per_seed)):
            arrays, n = per_seed[seed_index]
            chosen = rng.integers(0, n, size=n)
            values.append(_evaluate(statistic_fn, [array[chosen] for array in arrays]))
        replicates.append(np.mean(values, axis=0))
    return _percentile_interval(estimate, replicates, confidence)


def cka_from_batch_terms(batch_terms, batch_indices=None):
    """``[Lx, Ly]`` minibatch CKA from per-batch HSIC_1 terms (``accumulate_cka(..., return_batch_terms=True)``).

    ``batch_terms``: dict of ``cross [B, Lx, Ly]``, ``self_x [B, Lx]``, ``self_y [B, Ly]``. ``batch_indices``
    (default all batches, once each) selects the batches whose terms are summed, repeats allowed:
    ``CKA_ij = sum cross_ij / sqrt(sum self_x_i * sum self_y_j)``. A layer whose summed self term is not positive
    (constant representation) gives NaN entries.
    """
    return _cka_from_checked_terms(*_check_batch_terms(batch_terms), batch_indices)


def _cka_from_checked_terms(cross, self_x, self_y, batch_indices=None):
    """:func:`cka_from_batch_terms` of terms already checked by :func:`_check_batch_terms`."""
    if batch_indices is not None:
        cross, self_x, self_y = cross[batch_indices], self_x[batch_indices], self_y[batch_indices]
    sum_x, sum_y = self_x.sum(axis=0), self_y.sum(axis=0)
    sum_x, sum_y = np.where(sum_x > 0, sum_x, np.nan), np.where(sum_y > 0, sum_y, np.nan)
    return cross.sum(axis=0) / np.sqrt(sum_x[:, None] * sum_y[None, :])


def cka_bootstrap_interval(batch_terms, statistic_fn, num_resamples=1000, confidence=0.95, seed=0,
                           batches_per_resample=None):
    """``(estimate, low, high)`` of ``statistic_fn(CKA matrix [Lx, Ly]) -> float`` with a percentile bootstrap
    over minibatches.

    ``batch_terms``: per-batch HSIC_1 terms (see :func:`cka_from_batch_terms`); the estimate is the statistic of
    the CKA matrix of all batches (equal to ``MinibatchCKA.result()``). Each replicate draws
    ``batches_per_resample`` batches (default ``B``, all of them) with replacement, sums their terms, recomputes
    the CKA matrix and applies ``statistic_fn``. When the batches come from ``P`` shuffled passes over the same
    examples, pass ``batches_per_resample=B // P`` (the batches of one pass): the ``B`` batches then hold only
    ``B / P`` batches' worth of independent examples, and drawing ``B`` would make the interval too narrow.

    Several matrices resampled jointly (e.g. two models' within-model maps from the same batches): pass a dict
    ``{name: batch_terms}`` whose entries all have the same ``B``; the same batch indices are drawn for every entry
    and ``statistic_fn`` receives ``{name: [Lx, Ly] matrix}``.
    """
    return _cka_bootstrap(batch_terms, [statistic_fn], num_resamples, confidence, seed, batches_per_resample)


def cka_bootstrap_interval_over_seeds(batch_terms, statistic_fns, num_resamples=1000, confidence=0.95, seed=0,
                                      batches_per_resample=None):
    """``(estimate, low, high)`` of a statistic measured on models trained with several seeds, all evaluated on the
    same minibatches (e.g. the ViT-minus-ResNet similarity of seed 0's pair and of seed 1's pair, from one joint
    CKA matrix): a two-level bootstrap over seeds and minibatches.

    ``statistic_fns``: one function per seed (at least 2), each taking the CKA matrix (or dict of matrices, as
    :func:`cka_bootstrap_interval`) and returning that seed's scalar. The estimate is their mean on all batches.
    Each replicate draws the batches with replacement (once, shared by the seeds, since the examples are shared),
    then the seeds with replacement, and averages the drawn seeds' statistics. Other arguments as
    :func:`cka_bootstrap_interval`.
    """
    if len(statistic_fns) < 2:
        raise ValueError(f"statistic_fns: expected one statistic per seed, at least 2, got {len(statistic_fns)}; "
                         "use cka_bootstrap_interval")
    return _cka_bootstrap(batch_terms, list(statistic_fns), num_resamples, confidence, seed, batches_per_resample)


def _cka_bootstrap(batch_terms, statistic_fns, num_resamples, confidence, seed, batches_per_resample):
    _check_interval_settings(num_resamples, confidence)
    joint = isinstance(batch_terms, dict) and not {"cross", "self_x", "self_y"} <= set(batch_terms)
    named_terms = batch_terms if joint else {None: batch_terms}
    if not named_terms:
        raise ValueError("batch_terms: expected per-batch terms or a non-empty dict of them")
    checked = {name: _check_batch_terms(terms, f"batch_terms[{name!r}]" if joint else "batch_terms")
               for name, terms in named_terms.items()}
    counts = {name: terms[0].shape[0] for name, terms in checked.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"batch_terms: jointly resampled entries must have the same number of batches, got {counts}")
    num_batches = next(iter(counts.values()))
    if num_batches < 2:
        raise ValueError(f"batch_terms: at least 2 minibatches are needed to resample, got {num_batches}")
    draws = num_batches if batches_per_resample is None else batches_per_resample
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or not 1 <= draws:
        raise ValueError(f"batches_per_resample: expected None or an int >= 1, got {batches_per_resample!r}")

    def statistic(indices, seeds):
        matrices = {name: _cka_from_checked_terms(*terms, indices) for name, terms in checked.items()}
        values = []
        for seed_index in seeds:
            value = np.asarray(statistic_fns[seed_index](matrices if joint else matrices[None]), dtype=np.float64)
            if value.ndim != 0:
                raise ValueError(f"statistic_fn: expected a scalar, got shape {value.shape}")
            if not np.isfinite(value):
                raise ValueError("statistic_fn output: not finite (NaN or inf); a constant layer gives NaN CKA "
                                 "entries, exclude it from the statistic")
            values.append(value)
        return np.mean(values)

    num_seeds = len(statistic_fns)
    estimate = statistic(None, range(num_seeds))
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(num_resamples):
        indices = rng.integers(0, num_batches, size=draws)
        seeds = rng.integers(0, num_seeds, size=num_seeds) if num_seeds > 1 else [0]
        replicates.append(statistic(indices, seeds))
    return _percentile_interval(estimate, replicates, confidence)


def _check_batch_terms(batch_terms, name="batch_terms"):
    """``(cross [B, Lx, Ly], self_x [B, Lx], self_y [B, Ly])`` float64 arrays, validated."""
    if not isinstance(batch_terms, dict) or not {"cross", "self_x", "self_y"} <= set(batch_terms):
        raise ValueError(f"{name}: expected a dict with 'cross' [B, Lx, Ly], 'self_x' [B, Lx] and 'self_y' [B, Ly] "
                         "(accumulate_cka(..., return_batch_terms=True))")
    cross, self_x, self_y = (token_layout.as_float64(batch_terms[key], f"{name}[{key!r}]")
                             for key in ("cross", "self_x", "self_y"))
    if cross.ndim != 3 or self_x.shape != cross.shape[:2] or self_y.shape != (cross.shape[0], cross.shape[2]):
        raise ValueError(f"{name}: expected cross [B, Lx, Ly], self_x [B, Lx], self_y [B, Ly], got shapes "
                         f"{cross.shape}, {self_x.shape}, {self_y.shape}")
    for key, array in (("cross", cross), ("self_x", self_x), ("self_y", self_y)):
        token_layout.check_finite(array, f"{name}[{key!r}]")
    return cross, self_x, self_y
