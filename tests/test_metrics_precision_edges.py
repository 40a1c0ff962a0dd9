"""Precision edges of the CKA ops, ``MinibatchCKA`` and ``CKALoss``: float32 features with large offsets at the
tolerance the centring promises, and hypothesis strategies over awkward shapes (d >> n, rank-1 data, duplicated
examples, a layer constant in only some minibatches), each against the NumPy float64 reference.

The float32 error bound (``float32_bound``). The ops centre float32 features ``x`` over the examples before the
float32 Gram matrix. With offsets ``c`` of 1e3 to 1e4 and a spread much smaller than ``c``, every feature and its
float32 mean ``m`` lie within a factor 2 of each other, so ``x - m`` is exact (Sterbenz): the centred features are
``X_c + 1 delta^T``, ``delta`` the error of the float32 mean, and the centring of the Gram matrix (``H K H`` or
Song et al.'s U-centring, both annihilate ``a 1^T + 1 b^T``) removes ``delta`` exactly. What is left is the
rounding of the float32 Gram matrix: each entry ``x_i . x_j`` over ``d`` features is off by at most
``gamma_d |x_i| |x_j|`` (``gamma_k = k u / (1 - k u)``, ``u = 2^-24``, any summation order), so the error matrix
``E`` has ``||E||_F <= gamma_d tr(K)``, ``K`` the Gram matrix of the centred features. (The tests use
``gamma_(d+2)``: for features near 0, where ``x - m`` is not exact, its rounding adds two more units.) The
centring ``C`` scales Frobenius norms by at most ``c_C``: 1 for ``H . H`` (an orthogonal projection on both sides), and
``1 + 2n/(n-2) + n^2/((n-1)(n-2))`` for the U-centring (its row and grand means, by Cauchy-Schwarz). CKA is the
cosine ``<C(K), C(L)> / (||C(K)|| ||C(L)||)``, and perturbing a vector ``a`` by ``e`` moves a cosine by at most
``(pi/2) ||e|| / ||a|| < 2 ||e|| / ||a||``, hence

    |CKA_float32 - CKA_reference| <= 2 sum_{R in x, y} c_C gamma_(d+2) tr(K_R) / ||C(K_R)||_F.

The offset ``c`` does not appear: that is what centring before the Gram matrix promises. (Without it the float32
Gram entries are ``~ d c^2`` and their rounding swamps the centred values; ``test_..._without_centring_...`` shows
the bound would catch that.) For ``MinibatchCKA`` the vectors are the concatenations over minibatches, so
``tr`` and ``||C(K)||`` become root sums of squares over them. ``CKALoss`` in float32 also centres the Gram matrix
and takes the inner products in float32: each centred entry is ``k - m_i - m_j (+ g)``, four terms of size at
most ``max |K| <= tr(K)``, with means over ``n`` terms, adding ``4 n gamma_(n+4) tr(K)`` to ``||E||_F``; the three
inner products of ``n^2`` terms add ``2 gamma_(n^2)``.
"""

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcnn_tf.metrics import CKALoss, cka, reference

UNIT_ROUNDOFF = 2.0**-24  # float32
seeds = st.integers(0, 2**31 - 1)


def gamma(k):
    return k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)


def centring_factor(n, unbiased):
    """``c_C``: the most the centring can scale the Frobenius norm of an error matrix ``[n, n]``."""
    return 1.0 + 2.0 * n / (n - 2) + n**2 / ((n - 1) * (n - 2)) if unbiased else 1.0


def relative_gram_error(batches, unbiased, loss=False):
    """``c_C * (Gram rounding) * tr(K) / ||C(K)||_F`` of one representation given over minibatches ``[n, ...]``."""
    traces, norms = [], []
    for x in batches:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        gram = (x - x.mean(axis=0)) @ (x - x.mean(axis=0)).T
        traces.append(np.trace(gram))
        norms.append(np.linalg.norm(reference.center_gram(gram, unbiased=unbiased)))
    n, d = np.asarray(batches[0]).shape[0], np.asarray(batches[0]).reshape(len(batches[0]), -1).shape[1]
    rounding = gamma(d + 2) + (4 * n * gamma(n + 4) if loss else 0.0)
    return centring_factor(n, unbiased) * rounding * np.linalg.norm(traces) / np.linalg.norm(norms)


def float32_bound(batches_x, batches_y, unbiased, loss=False):
    """The bound of the module docstring on |float32 CKA - reference CKA| (lists of minibatches of x and y)."""
    bound = 2.0 * (relative_gram_error(batches_x, unbiased, loss) + relative_gram_error(batches_y, unbiased, loss))
    return bound + (2.0 * gamma(len(batches_x[0]) ** 2) if loss else 0.0)


def offset_layers(rng, n, widths):
    """float32 layers ``[n, d]`` sharing two latent directions, each feature offset by a random +-(1e3 .. 1e4);
    spread about 1, so features and their means are within a factor 2."""
    latent = rng.standard_normal((n, 2))
    layers = []
    for d in widths:
        values = latent @ rng.standard_normal((2, d)) + 0.5 * rng.standard_normal((n, d))
        offsets = rng.choice([-1.0, 1.0], d) * 10.0 ** rng.uniform(3.0, 4.0, d)
        layers.append((values + offsets).astype(np.float32))
    return layers


def offset_pair(seed, n, dx, dy):
    return offset_layers(np.random.default_rng(seed), n, (dx, dy))


@settings(max_examples=15)
@given(seeds, st.integers(5, 40), st.integers(1, 64), st.integers(1, 64), st.booleans())
def test_float32_large_offsets_within_the_centring_bound(seed, n, dx, dy, unbiased):
    x, y = offset_pair(seed, n, dx, dy)
    expected = reference.linear_cka(x.astype(np.float64), y.astype(np.float64), unbiased=unbiased)
    bound = float32_bound([x], [y], unbiased)
    assert abs(float(cka.linear_cka(x, y, unbiased=unbiased)) - expected) <= bound
    loss_bound = float32_bound([x], [y], unbiased, loss=True)
    assert abs(1.0 - float(CKALoss(unbiased=unbiased)(x, y)) - expected) <= loss_bound


@settings(max_examples=8)
@given(seeds, st.integers(2, 4), st.integers(6, 24))
def test_minibatch_cka_float32_large_offsets_within_the_centring_bound(seed, num_batches, n):
    rng = np.random.default_rng(seed)
    widths = [3, 17, 40]
    batches = [offset_layers(rng, n, widths) for _ in range(num_batches)]
    metric = cka.MinibatchCKA(len(widths))
    for layers in batches:
        metric.update_state(layers)
    result = metric.result().numpy()
    expected = reference.minibatch_cka([[x.astype(np.float64) for x in layers] for layers in batches])
    for i in range(len(widths)):
        for j in range(len(widths)):
            bound = float32_bound([b[i] for b in batches], [b[j] for b in batches], unbiased=True)
            assert abs(result[i, j] - expected[i, j]) <= bound, (i, j, bound)


def test_the_bound_catches_a_float32_gram_matrix_without_centring():
    x, y = offset_pair(0, 32, 16, 12)
    expected = reference.linear_cka(x.astype(np.float64), y.astype(np.float64))
    uncentred = float(cka.cka(cka.gram_linear(x), cka.gram_linear(y)))  # raw float32 x x^T, centred afterwards
    assert abs(uncentred - expected) > 100 * float32_bound([x], [y], unbiased=False)


@settings(max_examples=10)
@given(seeds, st.integers(4, 10), st.integers(100, 3000), st.sampled_from([np.float32, np.float64]))
def test_many_more_features_than_examples(seed, n, d, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) + rng.standard_normal((n, 1)) * rng.standard_normal(d)).astype(dtype)
    y = (x[:, : d // 2] + rng.standard_normal((n, d // 2))).astype(dtype)
    for unbiased in (False, True):
        expected = reference.linear_cka(x.astype(np.float64), y.astype(np.float64), unbiased=unbiased)
        bound = 1e-10 if dtype == np.float64 else float32_bound([x], [y], unbiased)
        assert abs(float(cka.linear_cka(x, y, unbiased=unbiased)) - expected) <= bound
    metric = cka.MinibatchCKA(2)
    metric.update_state([x, y])
    expected = reference.minibatch_cka([[x.astype(np.float64), y.astype(np.float64)]])
    bound = 1e-10 if dtype == np.float64 else float32_bound([x], [y], unbiased=True)
    np.testing.assert_array_less(np.abs(metric.result().numpy() - expected), bound)


@settings(max_examples=15)
@given(seeds, st.integers(4, 30), st.integers(1, 20), st.integers(1, 20), st.floats(-1e4, 1e4))
def test_rank_one_representations_give_the_squared_correlation(seed, n, dx, dy, offset):
    """Biased linear CKA of ``u v^T`` and ``w z^T`` is ``corr(u, w)^2`` (both Gram matrices are rank 1)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(n)
    w = 0.6 * u + rng.standard_normal(n)
    x = np.outer(u, rng.standard_normal(dx)) + offset
    y = np.outer(w, rng.standard_normal(dy))
    expected = np.corrcoef(u, w)[0, 1] ** 2
    np.testing.assert_allclose(reference.linear_cka(x, y), expected, atol=1e-9)
    np.testing.assert_allclose(float(cka.linear_cka(x, y)), expected, atol=1e-9)
    np.testing.assert_allclose(1.0 - float(CKALoss(dtype="float64")(x, y)), expected, atol=1e-9)
    np.testing.assert_allclose(float(cka.linear_cka(x, y, unbiased=True)),
                               reference.linear_cka(x, y, unbiased=True), atol=1e-9)


@settings(max_examples=15)
@given(seeds, st.integers(4, 12), st.integers(2, 3), st.integers(1, 8))
def test_duplicated_examples(seed, n, copies, d):
    """Biased CKA is unchanged when every example appears ``copies`` times; the unbiased one matches the reference
    on any data with repeated rows (its estimator is not invariant to them)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.tanh(x @ rng.standard_normal((d, 5))) + 0.3 * rng.standard_normal((n, 5))
    tiled_x, tiled_y = np.tile(x, (copies, 1)), np.tile(y, (copies, 1))
    np.testing.assert_allclose(float(cka.linear_cka(tiled_x, tiled_y)), reference.linear_cka(x, y), atol=1e-10)
    np.testing.assert_allclose(float(cka.linear_cka(tiled_x, tiled_y, unbiased=True)),
                               reference.linear_cka(tiled_x, tiled_y, unbiased=True), atol=1e-10)
    rows = rng.integers(0, n, n + 3)  # some examples repeated, some left out
    batches = [[x[rows], y[rows]], [tiled_x, tiled_y]]
    metric = cka.MinibatchCKA(2)
    for layers in batches:
        metric.update_state(layers)
    np.testing.assert_allclose(metric.result().numpy(), reference.minibatch_cka(batches), atol=1e-10)


@settings(max_examples=10)
@given(seeds, st.integers(2, 5), st.integers(4, 12), st.data())
def test_a_layer_constant_in_only_some_minibatches(seed, num_batches, n, data):
    """A layer constant over the examples of some minibatches (not all) contributes nothing there and stays a
    valid layer; constant in every minibatch, it is degenerate (NaN row and column) in both implementations."""
    constant_in = data.draw(st.lists(st.integers(0, num_batches - 1), min_size=1, max_size=num_batches - 1,
                                     unique=True), label="constant_in")
    fill = data.draw(st.sampled_from([0.0, 0.1, 1e3 + 0.1]), label="fill")
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(num_batches):
        latent = rng.standard_normal((n, 2))
        layers = [latent @ rng.standard_normal((2, d)) + 0.3 * rng.standard_normal((n, d)) for d in (4, 6, 3)]
        if b in constant_in:
            layers[1] = np.full((n, 6), fill)
        batches.append([layer.astype(np.float32) for layer in layers])
    expected = reference.minibatch_cka([[x.astype(np.float64) for x in layers] for layers in batches])
    metric = cka.MinibatchCKA(3)
    for layers in batches:
        metric.update_state(layers)
    assert np.all(np.isfinite(expected))
    assert metric.degenerate_layers() == ([], [])
    np.testing.assert_allclose(metric.result().numpy(), expected, atol=1e-5)

    metric.reset_state()
    for layers in batches:
        layers = list(layers)
        layers[1] = np.full((n, 6), fill, np.float32)
        metric.update_state(layers)
    assert metric.degenerate_layers() == ([1], [1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = metric.result().numpy()
        expected = reference.minibatch_cka([[np.full((n, 6), fill) if i == 1 else x.astype(np.float64)
                                             for i, x in enumerate(layers)] for layers in batches])
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
    assert np.isnan(result[1]).all() and np.isnan(result[:, 1]).all()
