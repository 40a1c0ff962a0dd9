"""``MinibatchCKA`` against ``reference.minibatch_cka``: modes, dtypes, tf.function, MirroredStrategy, bad input."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcnn_tf.metrics import cka, minibatch, reference

seeds = st.integers(0, 2**32 - 1)


def random_layers(rng, n, widths, dtype=np.float32):
    """Leaky-ReLU layers ``[n, d_l]`` sharing a latent code (so CKA values spread between 0 and 1); never constant."""
    latent = rng.standard_normal((n, 3))
    layers = []
    for d in widths:
        pre_activation = latent @ rng.standard_normal((3, d)) + rng.standard_normal((n, d))
        layers.append((np.maximum(pre_activation, 0.0) + 0.1 * pre_activation).astype(dtype))
    return layers


def random_batches(seed, num_batches, n, widths, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [random_layers(rng, n, widths, dtype) for _ in range(num_batches)]


def run_metric(batches_x, batches_y=None):
    metric = cka.MinibatchCKA(len(batches_x[0]), None if batches_y is None else len(batches_y[0]))
    for b, layers in enumerate(batches_x):
        metric.update_state(layers, None if batches_y is None else batches_y[b])
    return metric


@settings(max_examples=10)
@given(seeds, st.integers(1, 4), st.integers(4, 12), st.sampled_from([np.float32, np.float64]))
def test_minibatch_cka_over_k_batches_equals_reference(seed, num_batches, n, dtype):
    batches = random_batches(seed, num_batches, n, [3, 7, 2, 5], dtype)
    expected = reference.minibatch_cka(batches)
    result = run_metric(batches).result()
    assert result.dtype == tf.float64 and result.shape == (4, 4)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-6 if dtype == np.float64 else 1e-4)


@settings(max_examples=10)
@given(seeds, st.integers(1, 3), st.integers(4, 10))
def test_cross_model_mode_equals_block_of_within_model_run_on_concatenated_layers(seed, num_batches, n):
    batches_x = random_batches(seed, num_batches, n, [4, 2, 6])
    batches_y = random_batches(seed + 1, num_batches, n, [5, 3])
    for by in batches_y:  # make the two models related
        by[0] += batches_x[0][0][:, :1]
    cross = run_metric(batches_x, batches_y).result().numpy()
    within = run_metric([bx + by for bx, by in zip(batches_x, batches_y)]).result().numpy()
    np.testing.assert_allclose(cross, within[:3, 3:], atol=1e-12)
    np.testing.assert_allclose(cross, reference.minibatch_cka(batches_x, batches_y), atol=1e-4)
    # Cross mode really uses ys: feeding xs twice would give the x-x block instead.
    assert np.max(np.abs(within[:3, :3][:, :2] - cross)) > 1e-3


def test_batches_are_accumulated_not_overwritten_and_reset_state_clears():
    batches = random_batches(0, 3, 8, [4, 6, 3])
    metric = run_metric(batches)
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches), atol=1e-4)
    assert np.max(np.abs(metric.result().numpy() - reference.minibatch_cka(batches[-1:]))) > 1e-3
    assert float(metric.num_batches.numpy()) == 3
    metric.reset_state()
    assert float(metric.num_batches.numpy()) == 0
    metric.update_state(batches[1])
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches[1:2]), atol=1e-4)


@pytest.mark.parametrize("within_model", [True, False])
def test_minibatch_terms_are_each_batch_hsic_and_leave_the_state_unchanged(within_model):
    batches_x = random_batches(11, 2, 9, [4, 3], np.float64)
    batches_y = None if within_model else random_batches(12, 2, 9, [5, 2, 3], np.float64)
    metric = cka.MinibatchCKA(2, None if within_model else 3)
    totals = None
    for b, layers_x in enumerate(batches_x):
        layers_y = layers_x if within_model else batches_y[b]
        terms = metric.minibatch_terms(layers_x, None if within_model else layers_y)
        grams_x = [reference.gram_linear(x) for x in layers_x]
        grams_y = [reference.gram_linear(y) for y in layers_y]
        expected_cross = [[reference.hsic(k, g, unbiased=True) for g in grams_y] for k in grams_x]
        np.testing.assert_allclose(terms["cross"].numpy(), expected_cross, rtol=1e-9)
        expected_self_y = [reference.hsic(g, g, unbiased=True) for g in grams_y]
        np.testing.assert_allclose(terms["self_y"].numpy(), expected_self_y, rtol=1e-9)
        assert float(metric.num_batches.numpy()) == b  # minibatch_terms did not accumulate
        metric.update_state(layers_x, None if within_model else layers_y)
        totals = terms if totals is None else {key: totals[key] + terms[key] for key in terms}
    np.testing.assert_allclose(metric.cross_hsic.numpy(), totals["cross"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(metric.self_hsic_x.numpy(), totals["self_x"].numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"xs has 1 layers, expected num_layers_x=2"):
        metric.minibatch_terms(batches_x[0][:1], None if within_model else batches_y[0])


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_accepts_all_float_dtypes_and_accumulates_in_float64(dtype):
    batches = random_batches(1, 2, 10, [5, 3, 4], np.float64)
    cast = [[tf.cast(x, dtype) for x in layers] for layers in batches]
    seen = [[tf.cast(x, tf.float64).numpy() for x in layers] for layers in cast]  # the values TF actually sees
    metric = cka.MinibatchCKA(3)
    for layers in cast:
        metric.update_state(layers)
    assert metric.cross_hsic.dtype == "float64"
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(seen), atol=1e-4)


def test_float32_accumulation_dtype():
    batches = random_batches(2, 2, 8, [3, 5])
    metric = cka.MinibatchCKA(2, dtype="float32")
    for layers in batches:
        metric.update_state(layers)
    assert metric.result().dtype == tf.float32
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches), atol=1e-4)


def test_multi_dimensional_layers_are_flattened_and_large_batches_use_the_blocked_gram():
    rng = np.random.default_rng(3)
    batches = [[rng.standard_normal((40, 3, 4, 2)).astype(np.float32), rng.standard_normal((40, 5, 7))]
               for _ in range(2)]
    np.testing.assert_allclose(run_metric(batches).result().numpy(), reference.minibatch_cka(batches), atol=1e-5)


def test_update_inside_tf_function_equals_eager_and_traces_once_per_shape():
    batches = random_batches(4, 3, 8, [6, 2, 3])
    before = minibatch._batch_terms.experimental_get_tracing_count()
    eager = run_metric(batches)
    graph_metric = cka.MinibatchCKA(3)

    @tf.function
    def update(xs):
        graph_metric.update_state(xs)

    for layers in batches:
        update([tf.constant(x) for x in layers])
    np.testing.assert_allclose(graph_metric.result().numpy(), eager.result().numpy(), atol=1e-12)
    traces = minibatch._batch_terms.experimental_get_tracing_count()
    assert traces - before <= 2  # three eager updates: at most one trace (and one for the graph metric's updates)
    again = run_metric(batches)  # a new metric on the same shapes reuses the trace
    assert minibatch._batch_terms.experimental_get_tracing_count() == traces
    np.testing.assert_array_equal(again.result().numpy(), eager.result().numpy())

    @tf.function
    def result():
        return graph_metric.result()

    np.testing.assert_allclose(result().numpy(), eager.result().numpy(), atol=1e-12)


def test_update_inside_tf_function_with_unknown_batch_size():
    batches = random_batches(5, 2, 9, [3, 4])
    metric = cka.MinibatchCKA(2)
    spec = [tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None, 4], tf.float32)]

    @tf.function(input_signature=[spec])
    def update(xs):
        metric.update_state(xs)

    for layers in batches:
        update(layers)
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches), atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"xs\[1\] must hold the same number of examples as "
                                                             r"xs\[0\]"):
        update([batches[0][0], batches[0][1][:5]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"needs n >= 4 examples per minibatch in xs\[0\]"):
        update([batches[0][0][:3], batches[0][1][:3]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"xs must be finite .* at layer indices.*\[1\]"):
        update([batches[0][0], np.full((9, 4), np.inf, np.float32)])
    # Failed updates leave the sums untouched.
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches), atol=1e-4)


@pytest.mark.parametrize("within_model", [True, False])
def test_mirrored_strategy_sums_replica_minibatches(within_model):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "tests/conftest.py should create two logical CPU devices"
    strategy = tf.distribute.MirroredStrategy(devices)
    n = 6  # per replica
    batches_x = random_batches(6, 3, 2 * n, [4, 3, 5])
    batches_y = None if within_model else random_batches(7, 3, 2 * n, [2, 6])
    with strategy.scope():
        metric = cka.MinibatchCKA(3, None if within_model else 2)

    @tf.function
    def step(xs, ys):
        strategy.run(lambda a, b: metric.update_state(list(a), None if within_model else list(b)), args=(xs, ys))

    replica_x, replica_y = [], []
    for b, layers in enumerate(batches_x):
        other = layers if within_model else batches_y[b]
        dataset = tf.data.Dataset.from_tensors((tuple(layers), tuple(other))).unbatch().batch(2 * n)
        for xs, ys in strategy.experimental_distribute_dataset(dataset):
            step(xs, ys)
        # Each replica's local half of the global batch is one minibatch of the sums.
        replica_x += [[x[:n] for x in layers], [x[n:] for x in layers]]
        replica_y += [[y[:n] for y in other], [y[n:] for y in other]]
    expected = reference.minibatch_cka(replica_x, None if within_model else replica_y)
    np.testing.assert_allclose(metric.result().numpy(), expected, atol=1e-4)
    assert float(metric.num_batches.numpy()) == 6


def test_get_config_round_trips():
    metric = cka.MinibatchCKA(5, 3, name="vit_vs_resnet", dtype="float32")
    config = metric.get_config()
    assert config["num_layers_x"] == 5 and config["num_layers_y"] == 3
    clone = cka.MinibatchCKA.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, cka.MinibatchCKA) and restored.get_config() == config


def test_independent_features_unbiased_minibatch_cka_near_zero_while_biased_cka_inflated_at_small_n():
    rng = np.random.default_rng(0)
    n, d = 16, 64
    batches_x = [[rng.standard_normal((n, d))] for _ in range(10)]
    batches_y = [[rng.standard_normal((n, d))] for _ in range(10)]
    unbiased = run_metric(batches_x, batches_y).result().numpy()[0, 0]
    biased = [cka.linear_cka(bx[0], by[0]).numpy() for bx, by in zip(batches_x, batches_y)]
    assert abs(unbiased) < 0.1
    assert min(biased) > 0.5


# ---------------------------------------------------------------------------------------------------------------
# Degenerate layers and bad input


def test_dead_layers_in_a_100_layer_heatmap_give_nan_rows_and_a_warning_while_others_stay_exact():
    rng = np.random.default_rng(8)
    num_layers, dead = 100, [17, 60]
    batches = []
    for _ in range(2):
        layers = [rng.standard_normal((6, 2 + i % 3)).astype(np.float32) for i in range(num_layers)]
        layers[17] = np.zeros((6, 4), np.float32)  # dead ReLU layer
        layers[60] = np.full((6, 3), 0.37, np.float32)  # constant non-zero layer
        batches.append(layers)
    metric = run_metric(batches)
    with pytest.warns(RuntimeWarning, match=r"xs layers \[17, 60\] are constant over the examples"):
        result = metric.result().numpy()
    assert metric.degenerate_layers() == (dead, dead)
    assert np.all(np.isnan(result[dead])) and np.all(np.isnan(result[:, dead]))
    live = [i for i in range(num_layers) if i not in dead]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = reference.minibatch_cka([[layers[i] for i in live] for layers in batches])
    np.testing.assert_allclose(result[np.ix_(live, live)], expected, atol=1e-4)
    assert np.all(np.isfinite(result[np.ix_(live, live)]))


def test_dead_layer_of_the_second_model_is_named():
    batches_x = random_batches(9, 2, 8, [3, 4])
    batches_y = [[np.zeros((8, 5), np.float32), layers[0] + 1.0] for layers in batches_x]
    metric = run_metric(batches_x, batches_y)
    with pytest.warns(RuntimeWarning, match=r"ys layers \[0\] are constant"):
        result = metric.result().numpy()
    assert np.all(np.isnan(result[:, 0])) and np.all(np.isfinite(result[:, 1]))


def test_result_before_any_update_warns_and_is_nan():
    with pytest.warns(RuntimeWarning, match=r"result\(\) called before any update_state"):
        assert np.all(np.isnan(cka.MinibatchCKA(2).result().numpy()))


def test_fewer_than_four_examples_raises():
    with pytest.raises(ValueError, match=r"needs n >= 4 examples per minibatch in xs\[0\], got n=3"):
        cka.MinibatchCKA(2).update_state([np.ones((3, 2)), np.ones((3, 5))])


def test_example_count_mismatch_between_layers_or_models_raises():
    with pytest.raises(ValueError, match=r"xs\[1\] must hold the same number of examples as xs\[0\], got n=8 and "
                                         r"n=7"):
        cka.MinibatchCKA(2).update_state([np.ones((8, 2)), np.ones((7, 2))])
    with pytest.raises(ValueError, match=r"ys\[0\] must hold the same number of examples as xs\[0\], got n=8 and "
                                         r"n=6"):
        cka.MinibatchCKA(1, 1).update_state([np.ones((8, 2))], [np.ones((6, 2))])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_representation_raises_naming_the_layer_and_keeps_the_sums(bad):
    batches = random_batches(10, 1, 6, [3, 4, 2])
    metric = run_metric(batches)
    broken = [x.copy() for x in batches[0]]
    broken[2][3, 1] = bad
    with pytest.raises(ValueError, match=r"xs must be finite .*non-finite values found in xs at layer indices \[2\]"):
        metric.update_state(broken)
    cross = cka.MinibatchCKA(3, 1)
    with pytest.raises(ValueError, match=r"ys must be finite .* at layer indices \[0\]"):
        cross.update_state(batches[0], [broken[2]])
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches), atol=1e-4)


def test_float32_features_whose_gram_would_overflow_float32_match_the_reference():
    """Each layer is divided by a power of two near its largest magnitude before its float32 Gram matrix."""
    unit, x = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)
    layers = [unit, x * np.float32(1e25)]
    metric = cka.MinibatchCKA(2)
    metric.update_state(layers)
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka([layers]), atol=1e-4)


def test_empty_scalar_or_non_float_layers_raise():
    metric = cka.MinibatchCKA(2)
    with pytest.raises(ValueError, match=r"xs\[1\] must be a tensor \[n, \.\.\.\] of examples, got a scalar"):
        metric.update_state([np.ones((5, 2)), np.float32(1.0)])
    with pytest.raises(ValueError, match=r"xs\[0\] must be non-empty \[n, \.\.\.\], got shape \(0, 3\)"):
        metric.update_state([np.ones((0, 3)), np.ones((0, 3))])
    with pytest.raises(ValueError, match=r"xs\[1\] must be non-empty \[n, \.\.\.\], got shape \(5, 0\)"):
        metric.update_state([np.ones((5, 2)), np.ones((5, 0))])
    with pytest.raises(ValueError, match=r"xs\[0\] must be float16, bfloat16, float32 or float64, got int64"):
        metric.update_state([np.ones((5, 2), np.int64), np.ones((5, 2))])


def test_wrong_number_of_layers_or_wrong_mode_raises():
    with pytest.raises(ValueError, match=r"xs has 2 layers, expected num_layers_x=3"):
        cka.MinibatchCKA(3).update_state([np.ones((5, 2))] * 2)
    with pytest.raises(ValueError, match=r"ys has 3 layers, expected num_layers_y=2"):
        cka.MinibatchCKA(1, 2).update_state([np.ones((5, 2))], [np.ones((5, 2))] * 3)
    with pytest.raises(ValueError, match=r"ys \(a list of num_layers_y=2 tensors\) is required"):
        cka.MinibatchCKA(1, 2).update_state([np.ones((5, 2))])
    with pytest.raises(ValueError, match=r"ys must be None for a within-model metric"):
        cka.MinibatchCKA(1).update_state([np.ones((5, 2))], [np.ones((5, 2))])
    with pytest.raises(ValueError, match=r"xs must be a list of num_layers_x=1 tensors \[n, \.\.\.\], got"):
        cka.MinibatchCKA(1).update_state(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"num_layers_x must be a positive integer, got 0"):
        cka.MinibatchCKA(0)
