"""The checks' NumPy CKA of Gram matrices and of factors (vitcnn_tf.paper.measure_checks) against the float64
reference on the features, with the examples of one side reordered."""

import numpy as np

from vitcnn_tf.metrics import reference
from vitcnn_tf.paper import measure_checks


def features(seed, count=3, n=12, dim=5):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 2))
    return [shared @ rng.standard_normal((2, dim)) + 0.5 * rng.standard_normal((n, dim)) for _ in range(count)]


def test_minibatch_cka_of_grams_is_the_reference_minibatch_cka_with_the_examples_reordered():
    rows, cols = features(0, count=2), features(1, count=3)
    cka = measure_checks.minibatch_cka(measure_checks.grams(rows), measure_checks.grams(cols), 4)
    for order in (None, np.random.default_rng(2).permutation(12), np.random.default_rng(3).permutation(12)):
        found = cka(order)
        chosen = np.arange(12) if order is None else order
        for i, x in enumerate(rows):
            for j, y in enumerate(cols):
                batches_x = [[x[start:start + 4]] for start in range(0, 12, 4)]
                batches_y = [[y[chosen][start:start + 4]] for start in range(0, 12, 4)]
                expected = reference.minibatch_cka(batches_x, batches_y)
                np.testing.assert_allclose(found[i, j], np.asarray(expected).item(), rtol=1e-12)


def test_paired_linear_cka_is_the_reference_linear_cka_with_the_examples_reordered():
    rows, cols = features(3, count=2), features(4, count=3)
    cols[2] = cols[2][:, :3]  # factors of different widths
    centred = [[x - x.mean(axis=0) for x in group] for group in (rows, cols)]
    pairs = [(0, 2), (1, 0), (1, 1)]
    cka = measure_checks.paired_linear_cka([centred[0][i] for i, _ in pairs] + [None, centred[0][0]],
                                           [centred[1][j] for _, j in pairs] + [centred[1][0], None])
    order = np.random.default_rng(5).permutation(12)
    for chosen in (None, order):
        expected = [reference.linear_cka(rows[i], cols[j] if chosen is None else cols[j][chosen]) for i, j in pairs]
        found = cka(chosen)
        np.testing.assert_allclose(found[:3], expected, rtol=1e-12)
        assert np.isnan(found[3:]).all()  # a pair with a constant side (None) has no CKA
