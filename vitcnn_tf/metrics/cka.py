"""CKA and HSIC as compiled TensorFlow ops, and the streaming ``MinibatchCKA`` Keras metric.

The functions mirror ``vitcnn_tf.metrics.reference`` (same names, arguments and definitions; see its docstring
for the formulas and for how degenerate, i.e. constant, representations are handled) and take tensors or arrays
of float16, bfloat16, float32 or float64. Shapes: ``n`` examples, ``d`` features, ``L`` layers.

Precision. Linear-kernel Gram matrices are computed in float32 for float16 / bfloat16 / float32 input and in
float64 for float64 input; everything after the Gram matrix (centring, HSIC, CKA, accumulation) is float64.
``linear_cka`` and ``MinibatchCKA`` centre the features over the examples before the Gram matrix (this leaves the
centred Gram matrices unchanged), so a float32 Gram matrix loses no precision to large feature means; CKA from
float32 input then agrees with the float64 reference to about 1e-8 here (tested at 1e-4). ``gram_linear`` returns
the raw ``x x^T``: centring a float32 one afterwards (``cka(gram_linear(x), ...)``) is less precise.

Bad input raises ``ValueError`` when TensorFlow runs eagerly, or when it is visible from static shapes and dtypes
while a ``tf.function`` is traced; inside a graph, checks of values (NaN / Inf) and of dynamic shapes raise
``tf.errors.InvalidArgumentError`` when run. Every message names the argument and what was expected.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from vitcnn_tf.metrics import reference

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# The Gram matrix x x^T is symmetric: MinibatchCKA computes it as this many row blocks, each multiplied only with
# the rows from its own block on, which takes (B + 1) / (2 B) of the full product's FLOPs (3/4 for B = 2).
_GRAM_ROW_BLOCKS = 2


def gram_dtype(dtype):
    """The dtype a linear Gram matrix is computed in for features of ``dtype``: float64 or else float32."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def gram_linear(x):
    """Linear kernel ``x x^T``: ``x`` ``[n, ...]`` (flattened per example) -> float64 ``[n, n]``."""
    return _gram_linear_op(_features(x, "x", "gram_linear"))


def gram_rbf(x, threshold=1.0):
    """RBF kernel ``exp(-D / (2 * threshold**2 * median(D)))``: ``x`` ``[n, ...]`` -> float64 ``[n, n]``.

    ``D`` holds the squared distances between examples, the median is over its off-diagonal entries.
    """
    x = _features(x, "x", "gram_rbf")
    x, = _require(_num_examples(x) >= 2, "gram_rbf: x needs at least 2 examples for a median distance", x)
    threshold = tf.cast(threshold, tf.float64)
    threshold, = _require(threshold > 0, "gram_rbf: threshold must be a positive number", threshold)
    gram, median = _gram_rbf_op(x, threshold)
    gram, = _require(median > 0, "gram_rbf: the median squared distance between examples of x is 0 (most examples "
                                 "are identical); expected distinct examples", gram)
    return gram


def center_gram(k, unbiased=False):
    """Centre a Gram matrix ``k`` ``[n, n]`` -> float64 ``[n, n]``: ``H K H``, or U-centring (``n >= 3``)."""
    k = _gram(k, "k", "center_gram")
    if unbiased:
        k, = _require(_num_examples(k) >= 3, "center_gram: unbiased centring needs n >= 3 examples in k", k)
    return _center_op(k, unbiased=bool(unbiased))


def hsic(k, l, unbiased=False):  # noqa: E741 (the paper's name for the second Gram matrix)
    """HSIC of Gram matrices ``k``, ``l`` ``[n, n]`` -> float64 scalar.

    Biased: ``trace(K H L H) / (n - 1)**2``; unbiased: HSIC_1 of Song et al. (2012), ``n >= 4``.
    """
    k, l = _gram_pair(k, l, unbiased, "hsic")
    return _hsic_op(k, l, unbiased=bool(unbiased))


def cka(k, l, unbiased=False):  # noqa: E741
    """CKA of Gram matrices ``k``, ``l`` ``[n, n]`` -> float64 scalar ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    NaN for a degenerate (constant) representation; called eagerly, it also warns.
    """
    rtols = tuple(reference.degeneracy_rtol(gram_dtype(_float_tensor(g, name, "cka").dtype).as_numpy_dtype)
                  for g, name in ((k, "k"), (l, "l")))
    k, l = _gram_pair(k, l, unbiased, "cka")
    value, degenerate = _cka_op(k, l, unbiased=bool(unbiased), rtols=rtols)
    _warn_degenerate_pair("cka", degenerate)
    return value


def linear_cka(x, y, unbiased=False):
    """Linear CKA of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` -> float64 scalar, through centred-feature Grams."""
    x, y = _feature_pair(x, y, unbiased, "linear_cka")
    value, degenerate = _linear_cka_op(x, y, unbiased=bool(unbiased))
    _warn_degenerate_pair("linear_cka", degenerate)
    return value


def linear_cka_features(x, y, unbiased=False):
    """Linear CKA of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]`` in feature space (cheaper when ``d < n``).

    Same value as ``linear_cka``; the formulas are in ``reference.linear_cka_features``. Computed in float64.
    """
    x, y = _feature_pair(x, y, unbiased, "linear_cka_features")
    value, degenerate = _linear_cka_features_op(x, y, unbiased=bool(unbiased))
    _warn_degenerate_pair("linear_cka_features", degenerate)
    return value


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
    ``[Lx, n*n] x [n*n, Ly]`` matrix product, in one ``tf.function`` (traced once per input shapes: a smaller last
    batch traces once more). XLA is not used: for 50 layers on the 2-core CPU it took one to two minutes to compile
    and ran slower than TensorFlow's own kernels, which execute the independent per-layer matmuls concurrently.
    The state variables are sums (``SUM`` aggregation), so under a ``tf.distribute`` strategy each replica's local
    minibatch counts as one minibatch and ``result()`` sums over replicas.

    A layer constant over the examples (e.g. a dead ReLU layer) gets a NaN row / column and ``result()`` (when run
    eagerly) warns with its index; all other entries are unaffected. ``degenerate_layers()`` lists them.

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
        self._batch_terms = tf.function(self._compute_batch_terms, autograph=False)

    @property
    def within_model(self):
        """True when the metric compares the layers of one model with each other (``num_layers_y`` is None)."""
        return self.num_layers_y is None

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
        value = self.cross_hsic / tf.sqrt(self_x[:, None] * self_y[None, :])
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
        xs = _layer_list(xs, "xs", self.num_layers_x, "num_layers_x")
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
            ys = _layer_list(ys, "ys", self.num_layers_y, "num_layers_y")
        xs, ys = _require_same_examples(xs, ys)
        terms = self._batch_terms(xs, ys)
        checks = [_assert_finite_layers(terms[1], terms[2], "xs")]
        if not self.within_model:
            checks.append(_assert_finite_layers(terms[3], terms[4], "ys"))
        if tf.executing_eagerly():
            return terms
        with tf.control_dependencies(checks):
            return tuple(tf.identity(term) for term in terms)

    def _compute_batch_terms(self, xs, ys):
        """One minibatch's HSIC_1 terms: ``[Lx, Ly]`` cross, ``[Lx]`` self and tolerance, ``[Ly]`` likewise."""
        accumulate_dtype = tf.as_dtype(self.dtype)
        grams_x, tolerance_x = _u_centred_grams(xs, accumulate_dtype)
        if self.within_model:
            cross = tf.matmul(grams_x, grams_x, transpose_b=True)
            self_x = tf.linalg.diag_part(cross)
            return cross, self_x, tolerance_x, self_x, tolerance_x
        grams_y, tolerance_y = _u_centred_grams(ys, accumulate_dtype)
        cross = tf.matmul(grams_x, grams_y, transpose_b=True)
        self_x = tf.reduce_sum(tf.square(grams_x), axis=1)
        self_y = tf.reduce_sum(tf.square(grams_y), axis=1)
        return cross, self_x, tolerance_x, self_y, tolerance_y


def _u_centred_grams(layers, dtype):
    """Layers ``[n, ...]`` -> (U-centred Grams ``[L, n*n]`` scaled by ``1/sqrt(n(n-3))``, tolerances ``[L]``).

    The scaling makes inner products of rows HSIC_1 values; a layer's tolerance is its degeneracy threshold
    ``rtol * ||K_c||_F^2 / (n (n-3))``, ``K_c`` the Gram matrix of its centred features.
    """
    grams, rtols = [], []
    for x in layers:
        x = tf.reshape(x, [_num_examples(x), -1])
        compute_dtype = gram_dtype(x.dtype)
        x = tf.cast(x, compute_dtype)
        x = x - tf.reduce_mean(x, axis=0, keepdims=True)
        grams.append(tf.cast(_symmetric_gram(x), dtype))
        rtols.append(reference.degeneracy_rtol(compute_dtype.as_numpy_dtype))
    grams = tf.stack(grams)
    n = tf.cast(tf.shape(grams)[-1], dtype)
    scale = tf.math.rsqrt(n * (n - 3.0))
    tolerances = tf.constant(rtols, dtype) * tf.reduce_sum(tf.square(grams), axis=[1, 2]) * scale**2
    centred = _center(grams, unbiased=True) * scale
    return tf.reshape(centred, [len(layers), -1]), tolerances


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


# The compiled computations behind the public functions; their inputs are validated tensors.


@tf.function(autograph=False, reduce_retracing=True)
def _gram_linear_op(x):
    x = tf.cast(x, gram_dtype(x.dtype))
    return tf.cast(tf.matmul(x, x, transpose_b=True), tf.float64)


@tf.function(autograph=False, reduce_retracing=True)
def _gram_rbf_op(x, threshold):
    """(RBF Gram matrix ``[n, n]``, median off-diagonal squared distance) of ``x`` ``[n, d]``."""
    x = tf.cast(x, tf.float64)
    squared_norms = tf.reduce_sum(x * x, axis=1)
    distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
    distances = tf.linalg.set_diag(tf.maximum(distances, 0.0), tf.zeros_like(squared_norms))
    off_diagonal = tf.sort(tf.boolean_mask(distances, ~tf.eye(tf.shape(x)[0], dtype=tf.bool)))
    middle = tf.size(off_diagonal) // 2  # n (n - 1) is even: the median is the mean of the two middle values
    median = (off_diagonal[middle - 1] + off_diagonal[middle]) / 2.0
    return tf.exp(-distances / (2.0 * threshold**2 * median)), median


@tf.function(autograph=False, reduce_retracing=True)
def _center_op(k, unbiased):
    return _center(k, unbiased)


@tf.function(autograph=False, reduce_retracing=True)
def _hsic_op(k, l, unbiased):  # noqa: E741
    return _hsic_centred(_center(k, unbiased), _center(l, unbiased), unbiased)


@tf.function(autograph=False, reduce_retracing=True)
def _cka_op(k, l, unbiased, rtols):  # noqa: E741
    return _cka_of_grams(k, l, unbiased, rtols)


@tf.function(autograph=False, reduce_retracing=True)
def _linear_cka_op(x, y, unbiased):
    grams, rtols = [], []
    for features in (x, y):
        features = tf.cast(features, gram_dtype(features.dtype))
        features = features - tf.reduce_mean(features, axis=0, keepdims=True)
        grams.append(tf.cast(tf.matmul(features, features, transpose_b=True), tf.float64))
        rtols.append(reference.degeneracy_rtol(features.dtype.as_numpy_dtype))
    return _cka_of_grams(grams[0], grams[1], unbiased, rtols)


@tf.function(autograph=False, reduce_retracing=True)
def _linear_cka_features_op(x, y, unbiased):
    x, y = (tf.cast(f, tf.float64) for f in (x, y))
    x, y = (f - tf.reduce_mean(f, axis=0, keepdims=True) for f in (x, y))
    n = tf.cast(tf.shape(x)[0], tf.float64)

    def scaled_hsic(a, b):
        cross = tf.reduce_sum(tf.square(tf.matmul(a, b, transpose_a=True)))
        if not unbiased:
            return cross
        norms_a, norms_b = tf.reduce_sum(a * a, axis=1), tf.reduce_sum(b * b, axis=1)
        return (cross - n / (n - 2.0) * tf.reduce_sum(norms_a * norms_b)
                + tf.reduce_sum(norms_a) * tf.reduce_sum(norms_b) / ((n - 1.0) * (n - 2.0)))

    self_x, self_y = scaled_hsic(x, x), scaled_hsic(y, y)
    rtol = reference.degeneracy_rtol(np.float64)
    # The degeneracy scale ||K_c||_F^2 of the centred Gram matrix K_c = X X^T equals ||X^T X||_F^2.
    degenerate = tf.stack([self_x <= rtol * tf.reduce_sum(tf.square(tf.matmul(x, x, transpose_a=True))),
                           self_y <= rtol * tf.reduce_sum(tf.square(tf.matmul(y, y, transpose_a=True)))])
    return _masked_ratio(scaled_hsic(x, y), self_x, self_y, degenerate), degenerate


def _cka_of_grams(k, l, unbiased, rtols):  # noqa: E741
    """(CKA, [2] degenerate flags) of float64 Gram matrices ``k``, ``l`` ``[n, n]``."""
    k_centred, l_centred = _center(k, unbiased), _center(l, unbiased)
    self_k = _hsic_centred(k_centred, k_centred, unbiased)
    self_l = _hsic_centred(l_centred, l_centred, unbiased)
    n = tf.cast(_num_examples(k), tf.float64)
    normaliser = n * (n - 3.0) if unbiased else (n - 1.0) ** 2
    degenerate = tf.stack([self_k <= rtols[0] * tf.reduce_sum(tf.square(k)) / normaliser,
                           self_l <= rtols[1] * tf.reduce_sum(tf.square(l)) / normaliser])
    return _masked_ratio(_hsic_centred(k_centred, l_centred, unbiased), self_k, self_l, degenerate), degenerate


def _masked_ratio(cross, self_x, self_y, degenerate):
    denominator = tf.sqrt(tf.where(tf.reduce_any(degenerate), tf.constant(np.nan, tf.float64), self_x * self_y))
    return cross / denominator


def _warn_degenerate_pair(caller, degenerate):
    if tf.executing_eagerly() and np.any(degenerate.numpy()):
        names = " and ".join(name for name, flag in zip(("first", "second"), degenerate.numpy()) if flag)
        warnings.warn(f"{caller}: the {names} representation is constant over the examples (zero centred Gram "
                      f"matrix); CKA is undefined, returning NaN", RuntimeWarning, stacklevel=3)


def _center(k, unbiased):
    """Centre float Gram matrices ``[..., n, n]``: biased ``H K H`` or Song et al.'s U-centring."""
    n = tf.cast(tf.shape(k)[-1], k.dtype)
    if not unbiased:
        means = tf.reduce_mean(k, axis=-1)
        grand_mean = tf.reduce_mean(means, axis=-1)[..., None, None]
        return k - means[..., :, None] - means[..., None, :] + grand_mean
    zero_diagonal = tf.zeros_like(tf.linalg.diag_part(k))
    k = tf.linalg.set_diag(k, zero_diagonal)
    means = tf.reduce_sum(k, axis=-1) / (n - 2.0)
    means -= tf.reduce_sum(means, axis=-1, keepdims=True) / (2.0 * (n - 1.0))
    return tf.linalg.set_diag(k - means[..., :, None] - means[..., None, :], zero_diagonal)


def _hsic_centred(k_centred, l_centred, unbiased):
    n = tf.cast(_num_examples(k_centred), tf.float64)
    normaliser = n * (n - 3.0) if unbiased else (n - 1.0) ** 2
    return tf.reduce_sum(k_centred * l_centred) / normaliser


def _num_examples(x):
    """Static ``n`` (a Python int) when known, else a scalar tensor."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _require(condition, message, *tensors):
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


def _float_tensor(x, name, caller):
    try:
        x = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{caller}: {name} must be a tensor or array of floats: {error}") from error
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{caller}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype.name}")
    return x


def _representation(x, name, caller):
    """A float tensor ``[n, ...]`` of known rank >= 1 that is not empty."""
    x = _float_tensor(x, name, caller)
    if x.shape.rank is None or x.shape.rank == 0:
        raise ValueError(f"{caller}: {name} must be a tensor [n, ...] of examples, got "
                         f"{'a scalar' if x.shape.rank == 0 else 'a tensor of unknown rank'}")
    if 0 in x.shape:
        raise ValueError(f"{caller}: {name} must be non-empty [n, ...], got shape {tuple(x.shape)}")
    if not x.shape.is_fully_defined():
        x, = _require(tf.size(x) > 0, f"{caller}: {name} must be non-empty [n, ...]", x)
    return x


def _features(x, name, caller):
    """Validate a finite representation ``[n, ...]``; return it flattened to ``[n, d]``."""
    x = _representation(x, name, caller)
    x = tf.reshape(x, [_num_examples(x), -1])
    x, = _require(tf.reduce_all(tf.math.is_finite(x)), f"{caller}: {name} must be finite, found NaN or Inf", x)
    return x


def _feature_pair(x, y, unbiased, caller):
    x, y = _features(x, "x", caller), _features(y, "y", caller)
    x, y = _require_equal_examples(x, y, f"{caller}: x and y must hold the same examples (equal n)")
    if unbiased:
        x, y = _require_unbiased_examples(x, f"{caller}: the unbiased HSIC estimator needs n >= 4 examples in x", x, y)
    return x, y


def _gram(k, name, caller):
    """Validate a finite symmetric Gram matrix ``[n, n]``; return it as float64."""
    k = _float_tensor(k, name, caller)
    shape = k.shape
    if shape.rank != 2 or (shape[0] is not None and shape[1] is not None and shape[0] != shape[1]) or 0 in shape:
        raise ValueError(f"{caller}: {name} must be a square Gram matrix [n, n], got shape {tuple(shape)}")
    if not shape.is_fully_defined():
        k, = _require(tf.equal(tf.shape(k)[0], tf.shape(k)[1]) & (tf.size(k) > 0),
                      f"{caller}: {name} must be a non-empty square Gram matrix [n, n]", k)
    k = tf.cast(k, tf.float64)
    k, = _require(tf.reduce_all(tf.math.is_finite(k)), f"{caller}: {name} must be finite, found NaN or Inf", k)
    k, = _require(tf.reduce_max(tf.abs(k - tf.transpose(k))) <= 1e-6 * tf.reduce_max(tf.abs(k)),
                  f"{caller}: {name} must be a symmetric Gram matrix [n, n]", k)
    return k


def _gram_pair(k, l, unbiased, caller):  # noqa: E741
    k, l = _gram(k, "k", caller), _gram(l, "l", caller)
    k, l = _require_equal_examples(k, l, f"{caller}: k and l must be Gram matrices of the same examples (equal n)")
    if unbiased:
        k, l = _require_unbiased_examples(k, f"{caller}: the unbiased HSIC estimator needs n >= 4 examples in k", k, l)
    return k, l


def _require_equal_examples(a, b, message):
    """Check that ``a`` and ``b`` hold the same number of examples; returns ``(a, b)``."""
    n_a, n_b = _num_examples(a), _num_examples(b)
    if isinstance(n_a, int) and isinstance(n_b, int):
        return _require(n_a == n_b, f"{message}, got n={n_a} and n={n_b}", a, b)
    return _require(tf.equal(n_a, n_b), message, a, b)


def _require_unbiased_examples(x, message, *tensors):
    """Check that ``x`` holds at least 4 examples; returns ``tensors``."""
    n = _num_examples(x)
    return _require(n >= 4, f"{message}, got n={n}" if isinstance(n, int) else message, *tensors)


def _layer_list(layers, name, expected, count_name):
    """Validate ``update_state``'s list of per-layer tensors ``[n, ...]``; returns a list of tensors."""
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"MinibatchCKA.update_state: {name} must be a list of {count_name}={expected} tensors "
                         f"[n, ...], got {type(layers).__name__}")
    if len(layers) != expected:
        raise ValueError(f"MinibatchCKA.update_state: {name} has {len(layers)} layers, expected "
                         f"{count_name}={expected}")
    return [_representation(x, f"{name}[{i}]", "MinibatchCKA.update_state") for i, x in enumerate(layers)]


def _require_same_examples(xs, ys):
    """Check that every layer of ``xs`` and ``ys`` holds the same ``n >= 4`` examples; returns ``(xs, ys)``."""
    caller = "MinibatchCKA.update_state"
    names = [f"xs[{i}]" for i in range(len(xs))] + [f"ys[{j}]" for j in range(len(ys))]
    layers = list(xs) + list(ys)
    layers = list(_require_unbiased_examples(
        layers[0], f"{caller}: the unbiased HSIC estimator needs n >= 4 examples per minibatch in {names[0]}",
        *layers))
    for i in range(1, len(layers)):
        layers[0], layers[i] = _require_equal_examples(
            layers[0], layers[i], f"{caller}: {names[i]} must hold the same number of examples as {names[0]}")
    return layers[:len(xs)], layers[len(xs):]


def _assert_finite_layers(self_hsic, tolerance, name):
    """Check that no layer's HSIC terms are NaN / Inf; the message lists the offending layer indices.

    Raises ``ValueError`` when eager; in a graph returns an assertion op (``InvalidArgumentError`` when run).
    """
    finite = tf.math.is_finite(self_hsic) & tf.math.is_finite(tolerance)
    message = (f"MinibatchCKA.update_state: {name} must be finite (no NaN or Inf, and small enough that the float32 "
               f"Gram matrix does not overflow); non-finite values found in {name} at layer indices")
    if tf.executing_eagerly():
        if not np.all(finite.numpy()):
            raise ValueError(f"{message} {np.flatnonzero(~finite.numpy()).tolist()}")
        return tf.no_op()
    return tf.debugging.Assert(tf.reduce_all(finite), [message, tf.where(~finite)[:, 0]], summarize=100)
