import math

import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.analysis import attention


def grid_position(index, side):
    return divmod(index, side)


def loop_mean_distance(attention_maps, patch_size, num_prefix_tokens, renormalize):
    """Independent reference: explicit loops over examples, heads, queries and keys."""
    n, heads, num_tokens, _ = attention_maps.shape
    side = math.isqrt(num_tokens - num_prefix_tokens)
    result = np.zeros(heads)
    for head in range(heads):
        total = 0.0
        for example in range(n):
            for query in range(num_prefix_tokens, num_tokens):
                weights = attention_maps[example, head, query, num_prefix_tokens:]
                if renormalize:
                    weights = weights / weights.sum()
                qr, qc = grid_position(query - num_prefix_tokens, side)
                for key, weight in enumerate(weights):
                    kr, kc = grid_position(key, side)
                    total += weight * patch_size * math.hypot(qr - kr, qc - kc)
        result[head] = total / (n * side * side)
    return result


def with_cls(patch_maps, cls_key_weight=0.0):
    """Embed ``[n, H, P, P]`` patch attention into ``[n, H, 1 + P, 1 + P]`` with a CLS token; each patch query puts
    ``cls_key_weight`` on the CLS key and the rest, proportionally, on the patches; the CLS row is uniform."""
    n, heads, num_patches, _ = patch_maps.shape
    full = np.zeros((n, heads, num_patches + 1, num_patches + 1))
    full[:, :, 0, :] = 1.0 / (num_patches + 1)
    full[:, :, 1:, 0] = cls_key_weight
    full[:, :, 1:, 1:] = (1.0 - cls_key_weight) * patch_maps
    return full


def offset_maps(side, offset):
    """``[P, P]`` one-hot attention from every patch to the patch at ``offset`` (the offset's sign flipped on an
    axis where it would leave the grid; the Euclidean distance is the same). Needs ``side >= 2 * offset``."""
    assert side >= 2 * max(offset)
    maps = np.zeros((side * side, side * side))
    for row in range(side):
        for col in range(side):
            target_row = row + offset[0] if row + offset[0] < side else row - offset[0]
            target_col = col + offset[1] if col + offset[1] < side else col - offset[1]
            maps[row * side + col, target_row * side + target_col] = 1.0
    return maps


def test_identity_attention_has_zero_distance():
    maps = with_cls(np.broadcast_to(np.eye(16), (3, 2, 16, 16)))
    np.testing.assert_allclose(attention.mean_attention_distance(maps, patch_size=16), [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("side, patch_size", [(2, 16), (3, 4), (5, 32)])
def test_uniform_attention_gives_mean_pairwise_grid_distance(side, patch_size):
    pairs = [(a, b) for a in range(side * side) for b in range(side * side)]
    expected = np.mean(
        [patch_size * math.dist(grid_position(a, side), grid_position(b, side)) for a, b in pairs]
    )
    num_patches = side * side
    uniform = np.full((2, 3, num_patches, num_patches), 1.0 / num_patches)
    got = attention.mean_attention_distance(uniform, patch_size, num_prefix_tokens=0)
    np.testing.assert_allclose(got, np.full(3, expected), rtol=1e-12)
    # With a CLS token receiving a third of every query's weight: renormalizing recovers the same answer.
    got_cls = attention.mean_attention_distance(with_cls(uniform, cls_key_weight=1 / 3), patch_size)
    np.testing.assert_allclose(got_cls, np.full(3, expected), rtol=1e-12)


@pytest.mark.parametrize("offset", [(0, 1), (1, 2), (3, 0), (2, 2)])
def test_one_hot_to_a_fixed_offset_gives_that_offset(offset):
    maps = np.stack([np.eye(49), offset_maps(7, offset)])[None]  # head 0 identity, head 1 the offset
    got = attention.mean_attention_distance(maps, patch_size=8, num_prefix_tokens=0)
    np.testing.assert_allclose(got, [0.0, 8 * math.hypot(*offset)], rtol=1e-12)


def test_cls_rows_and_columns_are_dropped_and_renormalize_switch():
    patch_maps = np.broadcast_to(offset_maps(4, (1, 1)), (2, 1, 16, 16))
    maps = with_cls(patch_maps, cls_key_weight=0.75)
    distance = 10 * math.sqrt(2)
    np.testing.assert_allclose(attention.mean_attention_distance(maps, 10, renormalize=True), [distance])
    # Without renormalization, the 3/4 of the mass on the CLS key counts as distance 0.
    np.testing.assert_allclose(attention.mean_attention_distance(maps, 10, renormalize=False), [distance / 4])
    # The CLS query row has no influence.
    changed = maps.copy()
    changed[:, :, 0, :] = 0.0
    changed[:, :, 0, -1] = 1.0
    np.testing.assert_allclose(attention.mean_attention_distance(changed, 10), [distance])


@pytest.mark.parametrize("num_prefix_tokens, renormalize", [(0, True), (1, True), (1, False), (2, True)])
def test_random_softmax_attention_matches_explicit_loops(num_prefix_tokens, renormalize):
    rng = np.random.default_rng(num_prefix_tokens)
    logits = rng.normal(size=(3, 4, num_prefix_tokens + 9, num_prefix_tokens + 9)) * 2
    maps = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    got = attention.mean_attention_distance(maps, 16, num_prefix_tokens=num_prefix_tokens, renormalize=renormalize)
    np.testing.assert_allclose(got, loop_mean_distance(maps, 16, num_prefix_tokens, renormalize), rtol=1e-12)


def test_tensorflow_float32_input_and_streaming_accumulator():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(10, 2, 17, 17))
    maps = (np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)).astype(np.float32)
    expected = attention.mean_attention_distance(maps, 4)
    np.testing.assert_allclose(attention.mean_attention_distance(tf.constant(maps), 4), expected, rtol=1e-12)
    accumulator = attention.MeanAttentionDistance(4)
    for start in (0, 3, 7):
        accumulator.update(tf.constant(maps[start : {0: 3, 3: 7, 7: 10}[start]]))
    np.testing.assert_allclose(accumulator.result(), expected, rtol=1e-12)
    per_example = accumulator.per_example()
    assert per_example.shape == (10, 2)
    np.testing.assert_allclose(per_example[4], attention.mean_attention_distance(maps[4:5], 4), rtol=1e-12)
    accumulator.reset()
    with pytest.raises(ValueError, match="no attention maps"):
        accumulator.result()


def test_patch_distance_matrix():
    distances = attention.patch_distance_matrix(3, 2.0)
    assert distances.shape == (9, 9)
    assert distances[0, 8] == pytest.approx(2 * math.sqrt(8))
    assert distances[4, 5] == 2.0
    np.testing.assert_array_equal(distances, distances.T)


def test_head_distance_spread():
    assert attention.head_distance_spread([3.0, 10.0, 4.0]) == 7.0
    np.testing.assert_allclose(attention.head_distance_spread([[1.0, 5.0], [2.0, 2.0]]), [4.0, 0.0])
    with pytest.raises(ValueError, match="head_distances"):
        attention.head_distance_spread(np.zeros((2, 2, 2)))


@pytest.mark.parametrize(
    "maps, kwargs, message",
    [
        (np.full((2, 17, 17), 1 / 17), {}, "rank 4"),
        (np.full((1, 2, 17, 16), 1 / 16), {}, "square"),
        (np.full((1, 2, 17, 17), 1 / 17), {"num_prefix_tokens": 0}, "square grid"),
        (np.full((1, 2, 18, 18), 1 / 18), {}, "square grid"),
        (np.full((1, 2, 17, 17), -1 / 17), {}, "negative"),
        (np.full((1, 2, 17, 17), np.nan), {}, "non-finite"),
        (np.full((1, 2, 17, 17), 1 / 17), {"num_prefix_tokens": 17}, "num_prefix_tokens"),
        (np.full((1, 2, 17, 17), 1 / 17), {"patch_size": 0}, "patch_size"),
        (np.full((0, 2, 17, 17), 1 / 17), {}, "empty"),
    ],
)
def test_bad_input_raises_clear_errors(maps, kwargs, message):
    kwargs = {"patch_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        attention.mean_attention_distance(maps, **kwargs)


def test_query_with_all_mass_on_cls_cannot_be_renormalized():
    maps = with_cls(np.broadcast_to(np.eye(4), (1, 1, 4, 4)), cls_key_weight=1.0)
    with pytest.raises(ValueError, match="renormalize=False"):
        attention.mean_attention_distance(maps, 16)
    np.testing.assert_allclose(attention.mean_attention_distance(maps, 16, renormalize=False), [0.0])
