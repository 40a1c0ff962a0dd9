import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.analysis import localization
from vitcnn_tf.metrics import reference


def patches_by_slicing(images, patch_size):
    """Independent patch extraction: ``[n, P, p * p * C]`` by explicit slicing, row-major over the grid."""
    n, height, width, _ = images.shape
    return np.stack(
        [
            images[:, r : r + patch_size, c : c + patch_size, :].reshape(n, -1)
            for r in range(0, height, patch_size)
            for c in range(0, width, patch_size)
        ],
        axis=1,
    )


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(-1, 1, size=(24, 12, 12, 3)).astype(np.float32)


def test_image_patches_matches_slicing(images):
    np.testing.assert_array_equal(localization.image_patches(images, 4), patches_by_slicing(images, 4))
    np.testing.assert_array_equal(localization.image_patches(images, 3), patches_by_slicing(images, 3))


def test_identity_model_has_unit_diagonal_and_perfect_localization(images):
    tokens = patches_by_slicing(images, 4)  # the "model" outputs each patch's own pixels as its token
    cka = localization.token_patch_cka(tokens, images, 4)
    assert cka.shape == (9, 9)
    np.testing.assert_allclose(np.diag(cka), 1.0, rtol=1e-12)
    assert np.max(cka - np.diag(np.diag(cka))) < 0.9
    scores = localization.localization_scores(cka)
    assert scores["top1_fraction"] == 1.0
    assert scores["mean_own_rank"] == 1.0
    assert scores["chance_top1_fraction"] == pytest.approx(1 / 9)
    assert scores["chance_mean_own_rank"] == pytest.approx(5.0)


def test_tokens_equal_to_the_global_mean_give_no_localization(images):
    patches = patches_by_slicing(images, 4)
    global_mean = np.broadcast_to(patches.mean(axis=1, keepdims=True), patches.shape)
    cka = localization.token_patch_cka(global_mean, images, 4)
    np.testing.assert_allclose(cka, np.broadcast_to(cka[0], cka.shape), rtol=1e-12)  # every token alike
    scores = localization.localization_scores(cka)
    assert scores["top1_fraction"] == pytest.approx(1 / 9)  # only the one token whose patch is the row's argmax
    assert scores["mean_own_rank"] == pytest.approx(5.0)  # (P + 1) / 2: chance


@pytest.mark.parametrize("method", ["features", "gram"])
def test_values_match_reference_linear_cka_with_prefix_and_chunks(images, method):
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(24, 1 + 9, 5)) + rng.normal(size=(1, 10, 5)) * 3
    cka = localization.token_patch_cka(tf.constant(tokens, tf.float32), images, 4, num_prefix_tokens=1, method=method)
    assert cka.shape == (9, 9)
    patches = patches_by_slicing(images.astype(np.float64), 4)
    for token, patch in [(0, 0), (3, 7), (8, 2), (5, 5)]:
        expected = reference.linear_cka(tokens.astype(np.float32)[:, 1 + token], patches[:, patch])
        assert cka[token, patch] == pytest.approx(expected, rel=1e-10)
    one_block_at_a_time = localization.token_patch_cka(tokens, images, 4, num_prefix_tokens=1, method=method,
                                                       max_bytes=1)
    full = localization.token_patch_cka(tokens[:, 1:], images, 4, method=method)
    np.testing.assert_allclose(one_block_at_a_time, full, rtol=1e-12)


@pytest.mark.parametrize("max_bytes", [localization.DEFAULT_MAX_BYTES, 1])  # from Gram matrices; recomputed
def test_resampled_maps_are_the_maps_of_the_resampled_examples(images, max_bytes):
    rng = np.random.default_rng(2)
    vit_tokens = rng.normal(size=(24, 1 + 9, 5)) + rng.normal(size=(1, 10, 5)) * 3
    feature_map = rng.normal(size=(24, 2, 2, 4))
    resampled = localization.ResampledTokenPatchCKA([vit_tokens, feature_map], images, 4, [1, 0], max_bytes)
    indices = rng.integers(0, 24, size=24)  # with repeats
    for found, tokens, prefix in zip(resampled(indices), [vit_tokens, feature_map], [1, 0]):
        expected = localization.token_patch_cka(tokens[indices], images[indices], 4, num_prefix_tokens=prefix)
        np.testing.assert_allclose(found, expected, rtol=1e-10)
        for token, patch in [(0, 0), (3, 7)]:
            chosen = tokens[indices].reshape(24, -1, tokens.shape[-1])[:, prefix + token]
            reference_value = reference.linear_cka(chosen, patches_by_slicing(images[indices].astype(np.float64),
                                                                              4)[:, patch])
            assert found[token, patch] == pytest.approx(reference_value, rel=1e-10)


def test_methods_agree_and_auto_picks_the_cheaper():
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, size=(10, 8, 8, 3))
    wide_tokens = rng.normal(size=(10, 4, 300))  # d * q = 14400 > n: Gram matrices are cheaper
    narrow_tokens = rng.normal(size=(10, 4, 2))
    for tokens in (wide_tokens, narrow_tokens):
        np.testing.assert_allclose(
            localization.token_patch_cka(tokens, images, 4, method="features"),
            localization.token_patch_cka(tokens, images, 4, method="gram"),
            rtol=1e-10,
        )
    assert localization._cheaper_method(10, 4, 300, 4, 48, 2**28) == "gram"
    assert localization._cheaper_method(1000, 64, 64, 64, 48, 2**28) == "features"
    with pytest.raises(ValueError, match="method"):
        localization.token_patch_cka(narrow_tokens, images, 4, method="svd")


def test_feature_map_tokens_are_positions_row_major(images):
    feature_map = np.random.default_rng(2).normal(size=(24, 3, 3, 7))
    np.testing.assert_allclose(
        localization.token_patch_cka(feature_map, images, 4),
        localization.token_patch_cka(feature_map.reshape(24, 9, 7), images, 4),
        rtol=1e-12,
    )


def test_region_mask_for_equal_coarser_and_finer_grids():
    np.testing.assert_array_equal(localization.region_mask((3, 3), (3, 3)), np.eye(9, dtype=bool))
    coarse = localization.region_mask((2, 2), (4, 4))
    # Token (0, 1) of a 2x2 map owns patches rows 0-1, columns 2-3 of the 4x4 grid.
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 2:4] = True
    np.testing.assert_array_equal(coarse[1].reshape(4, 4), expected)
    assert coarse.sum() == 16 and np.all(coarse.sum(axis=1) == 4)
    fine = localization.region_mask((4, 4), (2, 2))
    np.testing.assert_array_equal(fine, coarse.T)
    # A 3x3 map on a 2x2 patch grid: the middle row of cells straddles both patch rows.
    uneven = localization.region_mask((3, 3), (2, 2))
    assert uneven[4].all() and uneven[0].sum() == 1


def test_scores_with_a_coarse_mapping_and_ties():
    own = localization.region_mask((1, 2), (2, 2))  # token 0: left column patches {0, 2}; token 1: right {1, 3}
    cka_map = np.array([[0.1, 0.5, 0.9, 0.2], [0.3, 0.3, 0.8, 0.3]])
    scores = localization.localization_scores(cka_map, own_patches=own)
    # Token 0: best own patch (2) is the maximum. Token 1: best own patches (1, 3 at 0.3) rank behind 0.8 and tie
    # with patch 0: three patches share ranks 2-4, mean rank 3; its argmax (patch 2) is not its own.
    assert scores["top1_fraction"] == 0.5
    assert scores["mean_own_rank"] == pytest.approx((1 + 3) / 2)
    assert scores["chance_top1_fraction"] == pytest.approx(0.5)
    assert scores["chance_mean_own_rank"] == pytest.approx(5 / 3)
    tied_row = localization.localization_scores(np.array([[0.5, 0.5], [0.1, 0.9]]))
    assert tied_row["top1_fraction"] == pytest.approx((0.5 + 1) / 2)
    assert tied_row["mean_own_rank"] == pytest.approx((1.5 + 1) / 2)


def test_constant_token_is_nan_with_a_warning_and_left_out_of_the_scores(images):
    tokens = patches_by_slicing(images, 4).copy()
    tokens[:, 4] = 1.0  # token 4 is the same for every image
    for method in ("features", "gram"):
        with pytest.warns(RuntimeWarning, match=r"tokens \[4\]"):
            cka = localization.token_patch_cka(tokens, images, 4, method=method)
        assert np.isnan(cka[4]).all() and np.isfinite(np.delete(cka, 4, axis=0)).all()
        scores = localization.localization_scores(cka)
        assert scores["num_tokens"] == 8 and scores["num_constant_tokens"] == 1
        assert scores["top1_fraction"] == 1.0


@pytest.mark.parametrize(
    "tokens_shape, image_shape, patch_size, message",
    [
        ((24, 9, 5), (24, 12, 12, 3), 5, "multiples of patch_size"),
        ((20, 9, 5), (24, 12, 12, 3), 4, "paired"),
        ((1, 9, 5), (1, 12, 12, 3), 4, "at least 2 examples"),
        ((24, 45), (24, 12, 12, 3), 4, "expected"),
        ((24, 9, 5), (24, 12, 12), 4, r"images: expected \[n, H, W, C\]"),
    ],
)
def test_bad_input_raises_clear_errors(tokens_shape, image_shape, patch_size, message):
    with pytest.raises(ValueError, match=message):
        localization.token_patch_cka(np.ones(tokens_shape), np.ones(image_shape), patch_size)


def test_scores_need_a_mapping_when_grids_differ():
    with pytest.raises(ValueError, match="own_patches"):
        localization.localization_scores(np.ones((4, 16)))
    with pytest.raises(ValueError, match="at least one patch per token"):
        localization.localization_scores(np.ones((2, 2)), own_patches=np.array([[True, False], [False, False]]))


def test_constant_tokens_follow_the_reference_degeneracy_rule(images):
    """A token the reference calls degenerate (NaN) is NaN here; a varying one gets the reference value."""
    tokens = patches_by_slicing(images, 4).copy()
    tokens[:, 2] = 0.25
    patches = patches_by_slicing(images.astype(np.float64), 4)
    with pytest.warns(RuntimeWarning):
        cka = localization.token_patch_cka(tokens, images, 4)
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(reference.linear_cka(tokens[:, 2], patches[:, 0]))
    assert np.isnan(cka[2]).all()
    assert cka[1, 0] == pytest.approx(reference.linear_cka(tokens[:, 1], patches[:, 0]), rel=1e-10)
