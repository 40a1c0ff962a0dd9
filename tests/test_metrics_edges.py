"""CKA at extreme scales and sizes: tiny or huge activations, one example.

CKA is scale-invariant, so the expected value at any scale is the NumPy float64 reference on the same data at
unit scale.
"""

import warnings

import numpy as np
import pytest

from vitcnn_tf.metrics import cka, ops, reference


def _pair(seed=0, n=32):
    """Two related, non-constant representations ``[n, 12]`` and ``[n, 6]`` at unit scale (float64)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12))
    y = np.tanh(x[:, :6] + x[:, 6:]) + 0.8 * rng.standard_normal((n, 6))
    return x, y


def _no_warnings(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args)


@pytest.mark.parametrize("linear_cka", [cka.linear_cka, ops.linear_cka_features], ids=["gram", "features"])
@pytest.mark.parametrize("scale, dtype", [(1e-20, np.float32), (1e19, np.float32), (1e200, np.float64)])
def test_linear_cka_of_tiny_or_huge_features_is_the_unit_scale_value(linear_cka, scale, dtype):
    """float32 * 1e-20 used to be NaN with a false "constant" warning; float32 * 1e19 and float64 * 1e200 a silent
    NaN (overflowing Gram matrix)."""
    x, y = _pair()
    expected = reference.linear_cka(x, y)
    assert 0.2 < expected < 0.9
    value = _no_warnings(linear_cka, (x * scale).astype(dtype), (y * scale).astype(dtype))
    np.testing.assert_allclose(float(value), expected, atol=1e-5)


def test_linear_cka_with_one_tiny_and_one_huge_representation():
    x, y = _pair(1)
    value = _no_warnings(cka.linear_cka, (x * 1e-30).astype(np.float32), (y * 1e30).astype(np.float32))
    np.testing.assert_allclose(float(value), reference.linear_cka(x, y), atol=1e-5)


def test_a_constant_tiny_layer_is_still_degenerate():
    """Degeneracy is judged relative to the layer's own scale: a constant layer at 1e-20 is still constant."""
    x, _ = _pair()
    constant = np.tile(np.float32(1e-20) * np.arange(1, 7, dtype=np.float32), (32, 1))
    with pytest.warns(RuntimeWarning, match=r"linear_cka: the second representation is constant over the examples"):
        assert np.isnan(float(cka.linear_cka(x.astype(np.float32), constant)))


def test_minibatch_cka_of_float32_features_at_1e_minus_20_matches_the_reference():
    """It used to return NaN and warn that the layers were dead (constant over the examples)."""
    batches = [list(_pair(seed)) for seed in range(3)]
    metric = cka.MinibatchCKA(2)
    for layers in batches:
        metric.update_state([(layer * 1e-20).astype(np.float32) for layer in layers])
    value = _no_warnings(metric.result).numpy()
    expected = reference.minibatch_cka(batches)
    assert 0.2 < expected[0, 1] < 0.9
    np.testing.assert_allclose(value, expected, atol=1e-4)
    assert metric.degenerate_layers() == ([], [])


@pytest.mark.parametrize("scale", [1e-60, 1e70])
def test_minibatch_cka_of_float64_features_far_from_unit_scale_matches_the_reference(scale):
    """HSIC sums ~1e-240 or ~1e280: their product in the ratio would underflow / overflow float64."""
    batches = [list(_pair(seed)) for seed in range(2)]
    metric = cka.MinibatchCKA(2)
    for layers in batches:
        metric.update_state([layer * scale for layer in layers])
    np.testing.assert_allclose(_no_warnings(metric.result).numpy(), reference.minibatch_cka(batches), atol=1e-4)


def test_minibatch_cka_sums_minibatches_of_different_scales_in_the_data_units():
    """The per-layer rescaling is undone before summing: a 1e-3 minibatch weighs 1e-12 of a unit one."""
    unit, small = _pair(0), _pair(1)
    small_scaled = [layer * 1e-3 for layer in small]
    metric = cka.MinibatchCKA(2)
    for layers in (unit, small_scaled):
        metric.update_state([layer.astype(np.float32) for layer in layers])
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka([unit, small_scaled]), atol=1e-4)


def test_minibatch_cka_still_finds_an_exactly_dead_layer_beside_a_tiny_one():
    x, y = _pair()
    layers = [(x * 1e-20).astype(np.float32), np.zeros((32, 5), np.float32), (y * 1e-20).astype(np.float32)]
    metric = cka.MinibatchCKA(3)
    metric.update_state(layers)
    with pytest.warns(RuntimeWarning, match=r"xs layers \[1\] are constant over the examples"):
        value = metric.result().numpy()
    assert np.isnan(value[1]).all() and np.isnan(value[:, 1]).all()
    np.testing.assert_allclose(value[0, 2], reference.minibatch_cka([[x, y]])[0, 1], atol=1e-4)


def test_minibatch_cka_overflowing_float64_sums_name_float64_not_float32():
    """float64 features at 1e150 have HSIC terms ~1e600: the error names the layers and the real dtypes."""
    x, y = _pair()
    metric = cka.MinibatchCKA(2)
    with pytest.raises(ValueError, match=r"HSIC terms of xs overflow or underflow the metric's float64 running sums"
                                         r".*xs holds float64 features.*layer indices \[0, 1\]") as error:
        metric.update_state([x * 1e150, y * 1e150])
    assert "float32" not in str(error.value)
    assert float(metric.num_batches.numpy()) == 0
    cross = cka.MinibatchCKA(1, 2)
    with pytest.raises(ValueError, match=r"HSIC terms of ys .*layer indices \[1\]"):
        cross.update_state([x], [y, y * 1e150])


def test_minibatch_cka_with_a_float32_state_names_float32_for_tiny_float32_features():
    x, y = _pair()
    metric = cka.MinibatchCKA(2, dtype="float32")
    with pytest.raises(ValueError, match=r"metric's float32 running sums .*xs holds float32 features.*use "
                                         r"dtype='float64'.*layer indices \[0\]"):
        metric.update_state([(x * 1e-20).astype(np.float32), y.astype(np.float32)])


@pytest.mark.parametrize("function", [cka.linear_cka, ops.linear_cka_features, reference.linear_cka,
                                      reference.linear_cka_features])
def test_linear_cka_of_one_example_is_an_error_naming_the_shape(function):
    """It used to return NaN (0 / 0) silently."""
    x, y = _pair()
    with pytest.raises(ValueError, match=r"linear_cka(_features)?: x needs at least 2 examples, got shape "
                                         r"\(1, 3, 4\)"):
        function(x[:1].reshape(1, 3, 4), y[:1])


@pytest.mark.parametrize("function", [cka.hsic, cka.cka, reference.hsic, reference.cka])
def test_biased_hsic_and_cka_of_a_one_example_gram_matrix_are_errors(function):
    with pytest.raises(ValueError, match=r"k must be a Gram matrix of at least 2 examples, got shape \(1, 1\)"):
        function(np.ones((1, 1)), np.ones((1, 1)))


def test_reference_linear_cka_overflowing_float64_is_an_error_not_nan():
    x, y = _pair()
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(ValueError, match=r"linear_cka: the HSIC terms overflow float64"):
            reference.linear_cka(x * 1e200, y * 1e200)
