"""Input checks of the compiled CKA ops and of ``MinibatchCKA``: dtypes, shapes, finiteness, example counts.

Bad input raises ``ValueError`` when TensorFlow runs eagerly, or when it is visible from static shapes and dtypes
while a ``tf.function`` is traced; inside a graph, checks of values (NaN / Inf) and of dynamic shapes raise
``tf.errors.InvalidArgumentError`` when run. Every message names the argument and what was expected.
"""

import warnings

import numpy as np
import tensorflow as tf

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def num_examples(x):
    """Static ``n`` (a Python int) when known, else a scalar tensor."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def require(condition, message, *tensors):
    """Input check on a Python bool (static shapes) or a scalar bool tensor; returns ``tensors``.

    False raises ``ValueError(message)`` when the condition is static or TensorFlow runs eagerly. Inside a graph a
    dynamic condition becomes an assertion (``tf.errors.InvalidArgumentError`` with the message) that the returned
    tensors depend on, so nothing computed from them runs first.
    """
    if isinstance(condition, (bool, np.bool_)):
        if not condition:
            raise ValueError(message)
    elif tf.executing_eagerly():
        if not bool(condition.numpy()):
            raise ValueError(message)
    else:
        with tf.control_dependencies([tf.debugging.Assert(condition, [message])]):
            return tuple(tf.identity(t) for t in tensors)
    return tensors


def float_tensor(x, name, caller):
    try:
        x = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{caller}: {name} must be a tensor or array of floats: {error}") from error
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{caller}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype.name}")
    return x


def representation(x, name, caller):
    """A float tensor ``[n, ...]`` of known rank >= 1 that is not empty."""
    x = float_tensor(x, name, caller)
    if x.shape.rank is None or x.shape.rank == 0:
        raise ValueError(f"{caller}: {name} must be a tensor [n, ...] of examples, got "
                         f"{'a scalar' if x.shape.rank == 0 else 'a tensor of unknown rank'}")
    if 0 in x.shape:
        raise ValueError(f"{caller}: {name} must be non-empty [n, ...], got shape {tuple(x.shape)}")
    if not x.shape.is_fully_defined():
        x, = require(tf.size(x) > 0, f"{caller}: {name} must be non-empty [n, ...]", x)
    return x


def features(x, name, caller, min_examples=1):
    """Validate a finite representation ``[n, ...]`` with ``n >= min_examples``; return it flattened to ``[n, d]``."""
    x = representation(x, name, caller)
    if min_examples > 1:
        n = num_examples(x)
        message = f"{caller}: {name} needs at least {min_examples} examples"
        x, = require(n >= min_examples, f"{message}, got shape {tuple(x.shape)}" if isinstance(n, int) else message, x)
    x = tf.reshape(x, [num_examples(x), -1])
    x, = require(tf.reduce_all(tf.math.is_finite(x)), f"{caller}: {name} must be finite, found NaN or Inf", x)
    return x


def feature_pair(x, y, unbiased, caller):
    """Validate two representations of the same ``n >= 2`` examples (``n >= 4`` unbiased): CKA of one example is
    0 / 0."""
    x, y = features(x, "x", caller, min_examples=2), features(y, "y", caller, min_examples=2)
    x, y = require_equal_examples(x, y, f"{caller}: x and y must hold the same examples (equal n)")
    if unbiased:
        x, y = require_unbiased_examples(x, f"{caller}: the unbiased HSIC estimator needs n >= 4 examples in x", x, y)
    return x, y


def gram(k, name, caller, min_examples=1):
    """Validate a finite symmetric Gram matrix ``[n, n]`` with ``n >= min_examples``; return it as float64."""
    k = float_tensor(k, name, caller)
    shape = k.shape
    if shape.rank != 2 or (shape[0] is not None and shape[1] is not None and shape[0] != shape[1]) or 0 in shape:
        raise ValueError(f"{caller}: {name} must be a square Gram matrix [n, n], got shape {tuple(shape)}")
    if shape[0] is not None and shape[0] < min_examples:
        raise ValueError(f"{caller}: {name} must be a Gram matrix of at least {min_examples} examples, got shape "
                         f"{tuple(shape)}")
    if not shape.is_fully_defined():
        k, = require(tf.equal(tf.shape(k)[0], tf.shape(k)[1]) & (tf.shape(k)[0] >= min_examples),
                      f"{caller}: {name} must be a square Gram matrix [n, n] with n >= {min_examples}", k)
    k = tf.cast(k, tf.float64)
    k, = require(tf.reduce_all(tf.math.is_finite(k)), f"{caller}: {name} must be finite, found NaN or Inf", k)
    k, = require(tf.reduce_max(tf.abs(k - tf.transpose(k))) <= 1e-6 * tf.reduce_max(tf.abs(k)),
                  f"{caller}: {name} must be a symmetric Gram matrix [n, n]", k)
    return k


def gram_pair(k, l, unbiased, caller):  # noqa: E741
    k, l = gram(k, "k", caller, min_examples=2), gram(l, "l", caller, min_examples=2)
    k, l = require_equal_examples(k, l, f"{caller}: k and l must be Gram matrices of the same examples (equal n)")
    if unbiased:
        k, l = require_unbiased_examples(k, f"{caller}: the unbiased HSIC estimator needs n >= 4 examples in k", k, l)
    return k, l


def require_equal_examples(a, b, message):
    """Check that ``a`` and ``b`` hold the same number of examples; returns ``(a, b)``."""
    n_a, n_b = num_examples(a), num_examples(b)
    if isinstance(n_a, int) and isinstance(n_b, int):
        return require(n_a == n_b, f"{message}, got n={n_a} and n={n_b}", a, b)
    return require(tf.equal(n_a, n_b), message, a, b)


def require_unbiased_examples(x, message, *tensors):
    """Check that ``x`` holds at least 4 examples; returns ``tensors``."""
    n = num_examples(x)
    return require(n >= 4, f"{message}, got n={n}" if isinstance(n, int) else message, *tensors)


def layer_list(layers, name, expected, count_name):
    """Validate ``update_state``'s list of per-layer tensors ``[n, ...]``; returns a list of tensors."""
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"MinibatchCKA.update_state: {name} must be a list of {count_name}={expected} tensors "
                         f"[n, ...], got {type(layers).__name__}")
    if len(layers) != expected:
        raise ValueError(f"MinibatchCKA.update_state: {name} has {len(layers)} layers, expected "
                         f"{count_name}={expected}")
    return [representation(x, f"{name}[{i}]", "MinibatchCKA.update_state") for i, x in enumerate(layers)]


def require_same_examples(xs, ys):
    """Check that every layer of ``xs`` and ``ys`` holds the same ``n >= 4`` examples; returns ``(xs, ys)``."""
    caller = "MinibatchCKA.update_state"
    names = [f"xs[{i}]" for i in range(len(xs))] + [f"ys[{j}]" for j in range(len(ys))]
    layers = list(xs) + list(ys)
    layers = list(require_unbiased_examples(
        layers[0], f"{caller}: the unbiased HSIC estimator needs n >= 4 examples per minibatch in {names[0]}",
        *layers))
    for i in range(1, len(layers)):
        layers[0], layers[i] = require_equal_examples(
            layers[0], layers[i], f"{caller}: {names[i]} must hold the same number of examples as {names[0]}")
    return layers[:len(xs)], layers[len(xs):]


def assert_layer_terms(finite, in_range, name, input_dtypes, state_dtype):
    """Check one minibatch's per-layer HSIC terms; the messages list the offending layer indices.

    ``finite`` ``[L]``: the layer's features hold no NaN / Inf. ``in_range`` ``[L]``: its HSIC terms, which scale
    as ``|x|^4``, are normal numbers of the metric's ``state_dtype`` (it is not checked for non-finite layers).
    ``input_dtypes``: the layers' dtype names. Raises ``ValueError`` when eager; in a graph returns an assertion op
    (``InvalidArgumentError`` when run).
    """
    caller = "MinibatchCKA.update_state"
    remedy = "rescale these layers" + (" or use dtype='float64'" if state_dtype != tf.float64 else "")
    layer_dtypes = " and ".join(sorted(set(input_dtypes)))
    checked = (
        (finite, f"{caller}: {name} must be finite (no NaN or Inf); non-finite values found in {name} at layer "
                 f"indices"),
        (in_range | ~finite, f"{caller}: the HSIC terms of {name} overflow or underflow the metric's "
                             f"{state_dtype.name} running sums (they scale as |x|^4: features too large or too small "
                             f"in magnitude; {name} holds {layer_dtypes} features); {remedy}. Out of range at "
                             f"layer indices"),
    )
    if tf.executing_eagerly():
        for ok, message in checked:
            if not np.all(ok.numpy()):
                raise ValueError(f"{message} {np.flatnonzero(~ok.numpy()).tolist()}")
        return tf.no_op()
    return tf.group([tf.debugging.Assert(tf.reduce_all(ok), [message, tf.where(~ok)[:, 0]], summarize=100)
                     for ok, message in checked])


def warn_flagged_layers(caller, flags_x, flags_y, what):
    """When eager, one ``RuntimeWarning`` naming the flagged layers of x and of y (``[L]`` bool flags each):
    ``"<caller>: layers of x [...] and layers of y [...] <what>"``; nothing when none is flagged. For the public
    functions of ``procrustes`` and ``neighbours`` (the warning points at their caller)."""
    if not tf.executing_eagerly():
        return
    parts = [f"{name} {np.flatnonzero(np.asarray(flags)).tolist()}" for name, flags in
             (("layers of x", flags_x), ("layers of y", flags_y)) if np.any(np.asarray(flags))]
    if parts:
        warnings.warn(f"{caller}: {' and '.join(parts)} {what}", RuntimeWarning, stacklevel=4)
