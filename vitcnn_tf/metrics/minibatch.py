"""``MinibatchCKA``: the streaming minibatch CKA Keras metric (Nguyen et al. 2020) as one compiled update.

Shapes: ``n`` examples per minibatch, ``L`` layers. Matrix products run with TensorFloat-32 off
(``vitcnn_tf.metrics.precision``).
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from vitcnn_tf.metrics import checks, ops, reference
from vitcnn_tf.metrics.precision import full_float32_precision

# The Gram matrix x x^T is symmetric: MinibatchCKA computes it as this many row blocks, each multiplied only with
# the rows from its own block on, which takes (B + 1) / (2 B) of the full product's FLOPs (3/4 for B = 2).
_GRAM_ROW_BLOCKS = 2


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class MinibatchCKA(keras.metrics.Metric):
    """Streaming minibatch CKA (Nguyen et al. 2020) between all layers of one model or of two models.

    ``update_state(xs, ys=None)`` takes one minibatch: ``xs`` a list of ``num_layers_x`` tensors ``[n, ...]``
    (``n >= 4``, the same ``n`` for every layer); ``ys`` a list of ``num_layers_y`` tensors ``[n, ...]`` of the
    same examples when the metric compares two models (``num_layers_y`` given), None when it compares the layers
    of one model with each other. It adds every layer pair's unbiased HSIC_1 of this minibatch to running sums;
    ``result()`` returns ``[Lx, Ly]`` with ``CKA_ij = sum HSIC_1(K_i, L_j) / sqrt(sum HSIC_1(K_i, K_i) *
    sum HSIC_1(L_j, L_j))``, equal to ``reference.minibatch_cka`` on the same minibatches.

    One update computes each layer's Gram matrix once (float32 for float32 or narrower input, float64 for
    float64; features centred first), U-centres them all at once in ``dtype`` and gets every HSIC term from one
    ``[Lx, n*n] x [n*n, Ly]`` matrix product, in one ``tf.function`` shared by every metric of the process (traced
    once per input shapes and kind of metric: a smaller last batch traces once more, a new metric on layers of the
    same shapes not at all), with TensorFloat-32 off. The update is not XLA-compiled: TensorFlow's own kernels run
    the independent per-layer matrix products concurrently.
    The state variables are sums (``SUM`` aggregation), so under a ``tf.distribute`` strategy each replica's local
    minibatch counts as one minibatch and ``result()`` sums over replicas.

    A layer constant over the examples (e.g. a dead ReLU layer) gets a NaN row / column and ``result()`` (when run
    eagerly) warns with its index; all other entries are unaffected. ``degenerate_layers()`` lists them.

    Scale. Each layer's features are divided by a power of two near their largest magnitude before its Gram matrix
    (exact, so the HSIC terms at ordinary scales are unchanged to the last bit), and its HSIC terms are multiplied
    back in float64: tiny or huge activations (float32 at 1e-20 or 1e19) neither underflow nor overflow, and
    degeneracy is judged relative to each layer's own scale. The terms, which scale as ``|x|^4``, must still fit
    ``dtype``: with the default float64 any float32 / float16 input does; float64 features beyond about
    1e-70 .. 1e75 in magnitude (or float32 ones beyond the float32 range of ``|x|^4`` with ``dtype="float32"``)
    raise an error naming the layers and the dtypes.

    State (sums over minibatches, in ``dtype``): ``cross_hsic`` ``[Lx, Ly]``, ``self_hsic_x`` ``[Lx]``,
    ``self_hsic_y`` ``[Ly]`` (two-model metrics only), ``degeneracy_tolerance_x`` / ``_y`` (the thresholds of
    ``reference.degeneracy_rtol``) and ``num_batches``. ``minibatch_terms(xs, ys)`` returns one minibatch's
    HSIC_1 terms without accumulating them.

    Args:
      num_layers_x: number of layers in ``xs``.
      num_layers_y: number of layers in ``ys`` for a two-model comparison; None for a within-model one.
      name: metric name.
      dtype: dtype of the centring and of the running sums (default float64, whatever the input dtype).
    """

    def __init__(self, num_layers_x, num_layers_y=None, name="minibatch_cka", dtype="float64", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        for arg, value in (("num_layers_x", num_layers_x), ("num_layers_y", num_layers_y)):
            if value is None and arg == "num_layers_y":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"MinibatchCKA: {arg} must be a positive integer, got {value!r}")
        if tf.as_dtype(self.dtype) not in (tf.float32, tf.float64):
            raise ValueError(f"MinibatchCKA: dtype must be float32 or float64, got {self.dtype!r}")
        self.num_layers_x = int(num_layers_x)
        self.num_layers_y = None if num_layers_y is None else int(num_layers_y)
        num_y = self.num_layers_x if self.num_layers_y is None else self.num_layers_y
        self.cross_hsic = self.add_variable((self.num_layers_x, num_y), "zeros", dtype=self.dtype, name="cross_hsic")
        self.self_hsic_x = self.add_variable((self.num_layers_x,), "zeros", dtype=self.dtype, name="self_hsic_x")
        self.degeneracy_tolerance_x = self.add_variable((self.num_layers_x,), "zeros", dtype=self.dtype,
                                                        name="degeneracy_tolerance_x")
        if self.num_layers_y is not None:
            self.self_hsic_y = self.add_variable((num_y,), "zeros", dtype=self.dtype, name="self_hsic_y")
            self.degeneracy_tolerance_y = self.add_variable((num_y,), "zeros", dtype=self.dtype,
                                                            name="degeneracy_tolerance_y")
        self.num_batches = self.add_variable((), "zeros", dtype=self.dtype, name="num_batches")

    @property
    def within_model(self):
        """True when the metric compares the layers of one model with each other (``num_layers_y`` is None)."""
        return self.num_layers_y is None

    @full_float32_precision()
    def update_state(self, xs, ys=None):
        """Add one minibatch: ``xs`` list of ``Lx`` tensors ``[n, ...]``; ``ys`` list of ``Ly`` ones or None."""
        cross, self_x, tolerance_x, self_y, tolerance_y = self._checked_terms(xs, ys)
        self.cross_hsic.assign_add(cross)
        self.self_hsic_x.assign_add(self_x)
        self.degeneracy_tolerance_x.assign_add(tolerance_x)
        if not self.within_model:
            self.self_hsic_y.assign_add(self_y)
            self.degeneracy_tolerance_y.assign_add(tolerance_y)
        self.num_batches.assign_add(tf.ones((), self.dtype))

    @full_float32_precision()
    def minibatch_terms(self, xs, ys=None):
        """One minibatch's HSIC_1 terms, leaving the state unchanged (e.g. for bootstrap intervals over batches).

        Takes what ``update_state`` takes; returns a dict of ``dtype`` tensors ``cross`` ``[Lx, Ly]``, ``self_x``
        ``[Lx]`` and ``self_y`` ``[Ly]`` (``self_y`` is ``self_x`` within one model): the amounts ``update_state``
        adds to ``cross_hsic``, ``self_hsic_x`` and ``self_hsic_y``.
        """
        cross, self_x, _, self_y, _ = self._checked_terms(xs, ys)
        return {"cross": cross, "self_x": self_x, "self_y": self_y}

    def result(self):
        """``[Lx, Ly]`` minibatch CKA; NaN rows / columns for degenerate layers (warned about when eager)."""
        degenerate_x, degenerate_y = self._degenerate_masks()
        self_x = tf.where(degenerate_x, tf.constant(np.nan, self.dtype), self.self_hsic_x)
        self_y = self_x if self.within_model else tf.where(degenerate_y, tf.constant(np.nan, self.dtype),
                                                           self.self_hsic_y)
        # Square roots first: the product of two self-HSIC sums of tiny or huge layers would underflow / overflow.
        value = self.cross_hsic / (tf.sqrt(self_x)[:, None] * tf.sqrt(self_y)[None, :])
        if tf.executing_eagerly():
            self._warn_degenerate(degenerate_x.numpy(), degenerate_y.numpy())
        return value

    def degenerate_layers(self):
        """Indices of layers constant over the examples so far: ``(x_indices, y_indices)`` lists (eager only)."""
        degenerate_x, degenerate_y = self._degenerate_masks()
        return np.flatnonzero(degenerate_x.numpy()).tolist(), np.flatnonzero(degenerate_y.numpy()).tolist()

    def get_config(self):
        config = super().get_config()
        config.update(num_layers_x=self.num_layers_x, num_layers_y=self.num_layers_y)
        return config

    def _degenerate_masks(self):
        degenerate_x = tf.convert_to_tensor(self.self_hsic_x) <= self.degeneracy_tolerance_x
        if self.within_model:
            return degenerate_x, degenerate_x
        return degenerate_x, tf.convert_to_tensor(self.self_hsic_y) <= self.degeneracy_tolerance_y

    def _warn_degenerate(self, degenerate_x, degenerate_y):
        if float(self.num_batches.numpy()) == 0:
            warnings.warn(f"{self.name}: result() called before any update_state(); returning NaN", RuntimeWarning,
                          stacklevel=3)
            return
        parts = [f"xs layers {np.flatnonzero(degenerate_x).tolist()}"] if degenerate_x.any() else []
        if not self.within_model and degenerate_y.any():
            parts.append(f"ys layers {np.flatnonzero(degenerate_y).tolist()}")
        if parts:
            warnings.warn(f"{self.name}: {' and '.join(parts)} are constant over the examples (zero centred Gram "
                          f"matrix, e.g. a dead ReLU layer); their rows/columns of the CKA matrix are NaN",
                          RuntimeWarning, stacklevel=3)

    def _checked_terms(self, xs, ys):
        """Validated inputs -> this minibatch's (cross, self_x, tolerance_x, self_y, tolerance_y), checked finite."""
        xs = checks.layer_list(xs, "xs", self.num_layers_x, "num_layers_x")
        if self.within_model:
            if ys is not None:
                raise ValueError("MinibatchCKA.update_state: ys must be None for a within-model metric "
                                 "(num_layers_y=None); create MinibatchCKA(num_layers_x, num_layers_y) to compare "
                                 "two models")
            ys = []
        else:
            if ys is None:
                raise ValueError(f"MinibatchCKA.update_state: ys (a list of num_layers_y={self.num_layers_y} "
                                 f"tensors) is required for a two-model metric")
            ys = checks.layer_list(ys, "ys", self.num_layers_y, "num_layers_y")
        xs, ys = checks.require_same_examples(xs, ys)
        terms = _batch_terms(xs, ys, self.within_model, tf.as_dtype(self.dtype).name)
        state_dtype = tf.as_dtype(self.dtype)
        assertions = [checks.assert_layer_terms(terms["finite_x"], terms["in_range_x"], "xs",
                                                [x.dtype.name for x in xs], state_dtype)]
        if not self.within_model:
            assertions.append(checks.assert_layer_terms(terms["finite_y"], terms["in_range_y"], "ys",
                                                        [y.dtype.name for y in ys], state_dtype))
        values = tuple(terms[key] for key in ("cross", "self_x", "tolerance_x", "self_y", "tolerance_y"))
        if tf.executing_eagerly():
            return values
        with tf.control_dependencies(assertions):
            return tuple(tf.identity(value) for value in values)


def _compute_batch_terms(xs, ys, within_model, dtype):
    """One minibatch's HSIC_1 terms in ``dtype`` (a dtype name) and per-layer checks, as a dict; with
    ``within_model`` the layers of ``xs`` are compared with each other (``ys`` unused).

    ``cross`` ``[Lx, Ly]``; ``self_x``, ``tolerance_x`` ``[Lx]`` (``_y``: ``[Ly]``, ``_x``'s within one model);
    ``finite_x`` / ``in_range_x`` ``[Lx]`` bool: the layer held no NaN / Inf, and its terms are normal numbers
    of ``dtype``. The Gram matrices are computed from features divided by a power of two near their largest
    magnitude (exact, and safe from underflow / overflow: ``ops.normalised_by_power_of_two``); the HSIC terms
    are brought back to the data's units in float64, as the running sums over minibatches need.
    """
    state_dtype = tf.as_dtype(dtype)
    grams_x, tolerance_x, exponent_x = _u_centred_grams(xs, state_dtype)
    if within_model:
        grams_y, tolerance_y, exponent_y = grams_x, tolerance_x, exponent_x
        cross = tf.matmul(grams_x, grams_x, transpose_b=True)
        self_x = self_y = tf.linalg.diag_part(cross)
    else:
        grams_y, tolerance_y, exponent_y = _u_centred_grams(ys, state_dtype)
        cross = tf.matmul(grams_x, grams_y, transpose_b=True)
        self_x = tf.reduce_sum(tf.square(grams_x), axis=1)
        self_y = tf.reduce_sum(tf.square(grams_y), axis=1)
    terms = {"cross": tf.cast(_in_data_units(cross, exponent_x[:, None], exponent_y[None, :]), state_dtype)}
    info = np.finfo(state_dtype.as_numpy_dtype)
    for side, self_hsic, tolerance, exponent in (("x", self_x, tolerance_x, exponent_x),
                                                 ("y", self_y, tolerance_y, exponent_y)):
        self_in_units, tolerance_in_units = (_in_data_units(t, exponent, exponent) for t in (self_hsic, tolerance))
        terms[f"self_{side}"] = tf.cast(self_in_units, state_dtype)
        terms[f"tolerance_{side}"] = tf.cast(tolerance_in_units, state_dtype)
        terms[f"finite_{side}"] = tf.math.is_finite(self_hsic) & tf.math.is_finite(tolerance)
        terms[f"in_range_{side}"] = ((self_in_units <= info.max) & (tolerance_in_units <= info.max)
                                     & ((tolerance == 0) | (tolerance_in_units >= info.tiny)))
    return terms


# Shared by every MinibatchCKA: traced once per input shapes, within_model and dtype.
_batch_terms = tf.function(_compute_batch_terms, autograph=False)


def _u_centred_grams(layers, dtype):
    """Layers ``[n, ...]`` -> (U-centred Grams ``[L, n*n]`` scaled by ``1/sqrt(n(n-3))``, tolerances ``[L]``,
    float64 exponents ``[L]``), of each layer's features divided by ``2**exponent`` (see ``_in_data_units``).

    The scaling makes inner products of rows HSIC_1 values; a layer's tolerance is its degeneracy threshold
    ``rtol * ||K_c||_F^2 / (n (n-3))``, ``K_c`` the Gram matrix of its centred features.
    """
    grams, rtols, exponents = [], [], []
    for x in layers:
        x = tf.reshape(x, [checks.num_examples(x), -1])
        compute_dtype = ops.gram_dtype(x.dtype)
        x, exponent = ops.normalised_by_power_of_two(tf.cast(x, compute_dtype))
        x = x - tf.reduce_mean(x, axis=0, keepdims=True)
        grams.append(tf.cast(_symmetric_gram(x), dtype))
        rtols.append(reference.degeneracy_rtol(compute_dtype.as_numpy_dtype))
        exponents.append(exponent)
    grams = tf.stack(grams)
    n = tf.cast(tf.shape(grams)[-1], dtype)
    scale = tf.math.rsqrt(n * (n - 3.0))
    tolerances = tf.constant(rtols, dtype) * tf.reduce_sum(tf.square(grams), axis=[1, 2]) * scale**2
    centred = ops.centered(grams, unbiased=True) * scale
    return tf.reshape(centred, [len(layers), -1]), tolerances, tf.stack(exponents)


def _in_data_units(terms, exponent_a, exponent_b):
    """float64 ``terms * 2**(2 exponent_a + 2 exponent_b)``: HSIC terms of features divided by ``2**exponent_a``
    and ``2**exponent_b`` back in the features' units (each factor is finite, so a zero term stays zero)."""
    factor = tf.pow(tf.constant(2.0, tf.float64), exponent_a) * tf.pow(tf.constant(2.0, tf.float64), exponent_b)
    return tf.cast(terms, tf.float64) * factor * factor


def _symmetric_gram(x):
    """``x x^T`` for ``x`` ``[n, d]`` from its upper block triangle (``_GRAM_ROW_BLOCKS`` row blocks) -> ``[n, n]``."""
    n = x.shape[0]
    if n is None or n < 4 * _GRAM_ROW_BLOCKS:
        return tf.matmul(x, x, transpose_b=True)
    bounds = [round(i * n / _GRAM_ROW_BLOCKS) for i in range(_GRAM_ROW_BLOCKS + 1)]
    # upper[r]: rows of block r times all rows from block r on, [bounds[r+1] - bounds[r], n - bounds[r]].
    upper = [tf.matmul(x[bounds[r]:bounds[r + 1]], x[bounds[r]:], transpose_b=True) for r in range(_GRAM_ROW_BLOCKS)]
    rows = []
    for r in range(_GRAM_ROW_BLOCKS):
        below_diagonal = [tf.transpose(upper[c][:, bounds[r] - bounds[c]:bounds[r + 1] - bounds[c]]) for c in range(r)]
        rows.append(tf.concat(below_diagonal + [upper[r]], axis=1))
    return tf.concat(rows, axis=0)

