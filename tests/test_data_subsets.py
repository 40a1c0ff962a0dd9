"""Stratified, nested subsets: class proportions, nesting, determinism and argument errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitcnn_tf.data import stratified_subset_indices


def _imbalanced_labels(seed=0):
    rng = np.random.default_rng(seed)
    counts = [500, 300, 120, 57, 23]
    return rng.permutation(np.repeat(np.arange(len(counts)), counts)), counts


def test_fraction_takes_ceil_of_every_class():
    labels, counts = _imbalanced_labels()
    for fraction in (0.03, 0.1, 0.3, 1.0):
        subset = stratified_subset_indices(labels, fraction=fraction)
        got = np.bincount(labels[subset], minlength=len(counts))
        assert got.tolist() == [math.ceil(fraction * n - 1e-9) for n in counts]
        assert np.all(np.diff(subset) > 0)  # ascending, no duplicates


def test_fraction_is_exact_when_the_product_is_an_integer():
    labels = np.repeat(np.arange(3), 10)
    assert stratified_subset_indices(labels, fraction=0.3).size == 9  # 0.3 * 10 is 3, not ceil(3.0000000000000004)


def test_fractions_are_nested_and_seed_dependent():
    labels, _ = _imbalanced_labels()
    subsets = [set(stratified_subset_indices(labels, fraction=f, subset_seed=7).tolist()) for f in (0.03, 0.1, 0.3)]
    assert subsets[0] < subsets[1] < subsets[2]
    again = stratified_subset_indices(labels, fraction=0.1, subset_seed=7)
    assert set(again.tolist()) == subsets[1]
    other = stratified_subset_indices(labels, fraction=0.1, subset_seed=8)
    assert set(other.tolist()) != subsets[1]


@given(st.integers(1, 1000), st.integers(1, 1000), st.integers(0, 3))
def test_num_examples_is_nested_and_proportional(first, second, seed):
    labels, counts = _imbalanced_labels()
    small, large = sorted((first, second))
    a = stratified_subset_indices(labels, num_examples=small, subset_seed=seed)
    b = stratified_subset_indices(labels, num_examples=large, subset_seed=seed)
    assert a.size == small and b.size == large
    assert set(a.tolist()) <= set(b.tolist())
    got = np.bincount(labels[b], minlength=len(counts))
    shares = np.asarray(counts) / labels.size
    expected = large * shares
    # each class is cut at a common priority threshold t (ceil(t n_c) examples) with sum = large, which bounds the
    # deviation from the proportional share by +1 above and by the C classes' rounding, C n_c / n, below
    assert np.all(got - expected <= 1.0 + 1e-9)
    assert np.all(got - expected >= -len(counts) * shares - 1e-9)


def test_fraction_subsets_are_prefixes_of_the_num_examples_order():
    labels, _ = _imbalanced_labels()
    by_fraction = stratified_subset_indices(labels, fraction=0.1)
    by_count = stratified_subset_indices(labels, num_examples=by_fraction.size + 5)
    assert set(by_fraction.tolist()) <= set(by_count.tolist())


def test_no_subset_returns_everything():
    labels = np.array([2, 0, 1, 1])
    np.testing.assert_array_equal(stratified_subset_indices(labels), np.arange(4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(fraction=0.0), "fraction must be in"),
    (dict(fraction=1.5), "fraction must be in"),
    (dict(fraction=-0.1), "fraction must be in"),
    (dict(num_examples=0), "num_examples must be a positive integer"),
    (dict(num_examples=2.5), "num_examples must be a positive integer"),
    (dict(num_examples=11), "larger than the split"),
    (dict(fraction=0.5, num_examples=3), "at most one of"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stratified_subset_indices(np.arange(10) % 2, **kwargs)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="1-D"):
        stratified_subset_indices(np.zeros((3, 2), int), fraction=0.5)
    with pytest.raises(ValueError, match="non-negative integers"):
        stratified_subset_indices(np.array([0.5, 1.0]), fraction=0.5)


def test_num_examples_is_exactly_balanced_on_imagenet_validation_like_labels():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(1000), 50))  # 1,000 classes of 50
    for count in (1000, 5000):
        assert set(np.bincount(labels[stratified_subset_indices(labels, num_examples=count)]).tolist()) == {
            count // 1000}
    uneven = np.bincount(labels[stratified_subset_indices(labels, num_examples=1500)], minlength=1000)
    assert set(uneven.tolist()) == {1, 2} and uneven.sum() == 1500


def test_examples_per_class_is_exact_whatever_the_class_sizes_and_nested():
    labels, counts = _imbalanced_labels()
    ten = stratified_subset_indices(labels, examples_per_class=10, subset_seed=3)
    assert np.bincount(labels[ten]).tolist() == [10] * len(counts)
    assert set(stratified_subset_indices(labels, examples_per_class=5, subset_seed=3)) < set(ten)
    # the first k of every class's permutation: also inside any fraction that gives each class at least k
    assert set(ten) <= set(stratified_subset_indices(labels, fraction=0.5, subset_seed=3))
    with pytest.raises(ValueError, match=r"examples_per_class must be an integer in \[1, 23\]"):
        stratified_subset_indices(labels, examples_per_class=24)
    with pytest.raises(ValueError, match="at most one of"):
        stratified_subset_indices(labels, examples_per_class=2, num_examples=10)
