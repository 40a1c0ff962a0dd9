"""Deterministic, stratified, nested subsets of a labelled split (the data-scale study of Section 8).

Every example gets a priority ``rank_within_class / class_count`` where ranks come from a seeded permutation of
each class; examples are ordered by (priority, class, rank). A ``fraction`` f keeps the examples with priority
< f, i.e. the first ``ceil(f * class_count)`` of every class; ``num_examples`` k keeps the first k of the order:
every class c gets between ``k n_c / n - C n_c / n`` and ``k n_c / n + 1`` examples (``n_c`` its size, ``n`` the
split's, ``C`` the number of classes): its proportional share up to the classes' rounding. All subsets are
prefixes of one order, so with the same ``subset_seed`` they are nested: 3% is inside 10% is inside 30% (and inside
any larger k). On a split whose classes have equal sizes (ImageNet's ``validation``: 1,000 classes of 50)
``num_examples`` k is exactly balanced: ``k // C`` or ``k // C + 1`` examples per class.

``examples_per_class`` k keeps the first ``k`` of every class's permutation: exactly ``k`` per class whatever the
class sizes (the few-shot sets of the linear probes; ImageNet's ``train`` classes hold 732 to 1,300 images, so a
proportional ``num_examples`` would give them unequal shares); it is nested with the other subsets of the same seed.
"""

import math

import numpy as np


def stratified_subset_indices(labels, fraction=None, num_examples=None, subset_seed=0, examples_per_class=None):
    """Indices (int64, ascending) of a stratified subset of ``labels`` ([n] non-negative ints).

    Give at most one of ``fraction`` (in (0, 1]), ``num_examples`` (1..n) and ``examples_per_class`` (1..the
    smallest class's size); with none, all indices.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"stratified_subset_indices: labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("stratified_subset_indices: labels must be non-negative integers")
    count = labels.shape[0]
    if sum(option is not None for option in (fraction, num_examples, examples_per_class)) > 1:
        raise ValueError("stratified_subset_indices: give at most one of fraction, num_examples and "
                         "examples_per_class")
    if fraction is not None:
        if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if num_examples is not None:
        if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
        if num_examples > count:
            raise ValueError(f"num_examples={num_examples} is larger than the split ({count} examples)")
    if fraction is None and num_examples is None and examples_per_class is None:
        return np.arange(count, dtype=np.int64)

    permuted = _permuted_classes(labels, subset_seed)
    if examples_per_class is not None:
        smallest = min(members.size for members in permuted.values())
        if isinstance(examples_per_class, bool) or int(examples_per_class) != examples_per_class \
                or not 1 <= examples_per_class <= smallest:
            raise ValueError(f"examples_per_class must be an integer in [1, {smallest}] (the smallest class's "
                             f"size), got {examples_per_class!r}")
        chosen = [members[: int(examples_per_class)] for members in permuted.values()]
    elif fraction is not None:
        chosen = [members[: _class_share(float(fraction), members.size)] for members in permuted.values()]
    else:
        chosen = [_priority_order(permuted)[: int(num_examples)]]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _class_share(fraction, class_count):
    """ceil(fraction * class_count), with a 1e-9 tolerance so that e.g. 0.3 * 10 gives 3, not 4."""
    return math.ceil(fraction * class_count - 1e-9)


def _permuted_classes(labels, subset_seed):
    """{label: indices of that class in a seeded permutation}; each class has its own stream."""
    permuted = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([int(subset_seed), int(label)])
        permuted[int(label)] = members[rng.permutation(members.size)]
    return permuted


def _priority_order(permuted):
    """All indices ordered by (rank / class_count, class, rank)."""
    indices = np.concatenate(list(permuted.values()))
    ranks = np.concatenate([np.arange(members.size) for members in permuted.values()])
    priority = np.concatenate([np.arange(members.size) / members.size for members in permuted.values()])
    classes = np.concatenate([np.full(members.size, label) for label, members in permuted.items()])
    return indices[np.lexsort((ranks, classes, priority))]
