"""The CKA ops and MinibatchCKA ask for full float32 precision (TensorFloat-32 off) and restore the setting."""

import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.metrics import cka, minibatch, ops
from vitcnn_tf.metrics.precision import full_float32_precision


@pytest.fixture
def tf32_enabled():
    """TensorFloat-32 switched on (as TensorFlow's default on A100 / H100) for the test, then restored."""
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(True)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(previous)


def _recording(function, seen):
    def wrapper(*args, **kwargs):
        seen.append(tf.config.experimental.tensor_float_32_execution_enabled())
        return function(*args, **kwargs)

    return wrapper


def test_context_manager_turns_tf32_off_and_restores_it_even_on_error(tf32_enabled):
    with full_float32_precision():
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    assert tf.config.experimental.tensor_float_32_execution_enabled()
    with pytest.raises(RuntimeError):
        with full_float32_precision():
            raise RuntimeError("inside")
    assert tf.config.experimental.tensor_float_32_execution_enabled()


@pytest.mark.parametrize("public, compiled, args", [
    (cka.gram_linear, "_gram_linear_op", ("x",)),
    (cka.gram_rbf, "_gram_rbf_op", ("x",)),
    (cka.center_gram, "_center_op", ("k",)),
    (cka.hsic, "_hsic_op", ("k", "k")),
    (cka.cka, "_cka_op", ("k", "k")),
    (cka.linear_cka, "_linear_cka_op", ("x", "y")),
    (ops.linear_cka_features, "_linear_cka_features_op", ("x", "y")),
])
def test_every_op_runs_its_compiled_computation_with_tf32_off(tf32_enabled, monkeypatch, public, compiled, args):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    inputs = {"x": x, "y": rng.normal(size=(8, 3)).astype(np.float32), "k": (x @ x.T).astype(np.float64)}
    seen = []
    monkeypatch.setattr(ops, compiled, _recording(getattr(ops, compiled), seen))
    public(*(inputs[name] for name in args))
    assert seen == [False]
    assert tf.config.experimental.tensor_float_32_execution_enabled()


@pytest.mark.parametrize("method", ["update_state", "minibatch_terms"])
def test_minibatch_cka_computes_its_terms_with_tf32_off(tf32_enabled, monkeypatch, method):
    metric = minibatch.MinibatchCKA(2)
    seen = []
    monkeypatch.setattr(minibatch, "_batch_terms", _recording(minibatch._batch_terms, seen))
    layers = [np.random.default_rng(i).normal(size=(6, 4)).astype(np.float32) for i in range(2)]
    getattr(metric, method)(layers)
    assert seen == [False]
    assert tf.config.experimental.tensor_float_32_execution_enabled()


def test_tf32_off_during_tracing_of_a_compiled_op(tf32_enabled):
    """The flag is read at trace time by XLA and at run time by the kernels: both happen inside the guard."""
    seen = []

    @tf.function
    def probe(x):
        seen.append(tf.config.experimental.tensor_float_32_execution_enabled())
        return tf.matmul(x, x, transpose_b=True)

    with full_float32_precision():
        probe(tf.ones((3, 2)))
    assert seen == [False]
