import keras
import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf.analysis import skip
from vitcnn_tf.models import Mixer, MixerConfig, ViT, ViTConfig
from vitcnn_tf.models.resnet_v2 import ResNetV2, ResNetV2Config


def tiny_vit(**overrides):
    return ViT(ViTConfig(**{**dict(patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=2,
                                   image_size=12, num_classes=3), **overrides}))


def images(count=6, size=12, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(count, size, size, 3)).astype(np.float32)


def test_hand_built_unit_with_known_norms():
    # 2 examples, tokens [CLS, a, b], 2 features. Skip norms: CLS 5 and 5, a 1 and 3, b 2 and 2.
    z = np.array([[[3, 4], [1, 0], [0, 2]], [[0, 5], [0, 3], [2, 0]]], dtype=np.float64)
    # Branch norms: CLS 1 and 1, a 2 and 2, b 4 and 8.
    f = np.array([[[1, 0], [0, 2], [4, 0]], [[0, 1], [2, 0], [0, 8]]], dtype=np.float64)
    accumulator = skip.NormRatioAccumulator([("u/in", "u/f", "u/+f")], num_prefix_tokens=1)
    accumulator.update({"u/in": z, "u/f": f, "u/+f": z + f})
    entry = accumulator.result()["u/+f"]
    np.testing.assert_allclose(entry["skip_norm"], [5, 2, 2])
    np.testing.assert_allclose(entry["branch_norm"], [1, 2, 6])
    np.testing.assert_allclose(entry["ratio_per_token"], [5, 1, 1 / 3])
    assert entry["ratio"] == pytest.approx(9 / 9)
    assert entry["ratio_spatial"] == pytest.approx(4 / 8)
    assert entry["ratio_cls"] == pytest.approx(5.0)
    assert entry["kind"] == "f"
    # Without a skip tap, z is recovered as sum - branch; batches accumulate.
    by_difference = skip.NormRatioAccumulator([(None, "u/f", "u/+f")], num_prefix_tokens=1)
    by_difference.update({"u/f": f[:1], "u/+f": (z + f)[:1]})
    by_difference.update({"u/f": f[1:], "u/+f": (z + f)[1:]})
    np.testing.assert_allclose(by_difference.result()["u/+f"]["ratio_per_token"], [5, 1, 1 / 3])


def test_zero_branch_gives_inf_never_nan_and_all_zero_is_an_error():
    z = np.ones((3, 4, 5))
    accumulator = skip.NormRatioAccumulator([("in", "u/f", "u/+f")], num_prefix_tokens=1)
    accumulator.update({"in": z, "u/f": np.zeros_like(z), "u/+f": z})
    entry = accumulator.result()["u/+f"]
    assert np.all(np.isinf(entry["ratio_per_token"]))
    assert entry["ratio"] == entry["ratio_spatial"] == entry["ratio_cls"] == np.inf
    accumulator = skip.NormRatioAccumulator([("in", "u/f", "u/+f")])
    accumulator.update({"in": np.zeros_like(z), "u/f": np.zeros_like(z), "u/+f": np.zeros_like(z)})
    with pytest.raises(ValueError, match="u/\\+f: both the skip and the branch"):
        accumulator.result()


def test_zero_initialised_branch_of_a_vit_gives_inf_without_nan():
    model = tiny_vit()
    dense = model.get_layer("block00_mlp_dense1")
    dense.set_weights([np.zeros_like(weight) for weight in dense.get_weights()])
    ratios = skip.norm_ratios(model, images())
    zero_branch = ratios["block00/+mlp"]
    assert np.all(np.isinf(zero_branch["ratio_per_token"])) and zero_branch["ratio_cls"] == np.inf
    for entry in ratios.values():
        for key in ("ratio_per_token", "ratio", "ratio_spatial", "ratio_cls"):
            assert not np.any(np.isnan(entry[key]))
    assert np.all(np.isfinite(ratios["block00/+sa"]["ratio_per_token"]))


def numpy_norm_ratios(model, batch, units):
    """Independent computation: the taps of each unit by a plain Keras sub-model, norms by NumPy loops."""
    names = [name for unit in units for name in unit]
    values = dict(zip(names, keras.Model(model.input, [model.taps[n] for n in names])(batch)))
    expected = {}
    for skip_tap, branch_tap, sum_tap in units:
        z, f = np.asarray(values[skip_tap], np.float64), np.asarray(values[branch_tap], np.float64)
        z, f = z.reshape(len(z), -1, z.shape[-1]), f.reshape(len(f), -1, f.shape[-1])
        skip_norm = np.array([[np.sqrt(np.sum(z[i, t] ** 2)) for t in range(z.shape[1])] for i in range(len(z))])
        branch_norm = np.array([[np.sqrt(np.sum(f[i, t] ** 2)) for t in range(f.shape[1])] for i in range(len(f))])
        expected[sum_tap] = skip_norm.mean(axis=0) / branch_norm.mean(axis=0)
    return expected


@pytest.mark.parametrize(
    "build, num_tokens",
    [
        (lambda: tiny_vit(), 10),
        (lambda: tiny_vit(classifier="gap", skip_blocks_removed=(1,)), 9),
        (lambda: Mixer(MixerConfig(patch_size=4, hidden_dim=8, num_blocks=1, tokens_mlp_dim=4, channels_mlp_dim=8,
                                   image_size=12, num_classes=3)), 9),
        (lambda: ResNetV2(ResNetV2Config(block_counts=(1, 1), width_factor=0.125, stem="small", image_size=12,
                                         num_classes=3, num_groups=4)), None),
    ],
    ids=["vit-cls", "vit-gap-skip-removed", "mixer", "resnet"],
)
def test_models_match_an_independent_computation(build, num_tokens):
    model = build()
    batch = images()
    ratios = skip.norm_ratios(model, batch, batch_size=4)
    units = [tuple(unit) for unit in model.residual_taps]
    assert list(ratios) == [sum_tap for _, _, sum_tap in units]
    expected = numpy_norm_ratios(model, batch, units)
    for sum_tap, entry in ratios.items():
        np.testing.assert_allclose(entry["ratio_per_token"], expected[sum_tap], rtol=1e-6)
        if num_tokens is not None:
            assert entry["ratio_per_token"].shape == (num_tokens,)
    first = next(iter(ratios.values()))
    if getattr(model.config, "num_prefix_tokens", 0):
        assert first["ratio_cls"] == pytest.approx(first["ratio_per_token"][0])
    else:
        assert first["ratio_cls"] is None
        assert first["ratio_spatial"] == pytest.approx(first["ratio"])


def test_skip_removed_block_is_not_a_residual_unit():
    ratios = skip.norm_ratios(tiny_vit(skip_blocks_removed=(0,)), images(2))
    assert list(ratios) == ["block01/+sa", "block01/+mlp"]


def test_dataset_input_equals_array_input():
    model = tiny_vit()
    batch = images(5)
    dataset = tf.data.Dataset.from_tensor_slices((batch, np.zeros(5, np.int32))).batch(2)
    from_dataset = skip.norm_ratios(model, dataset)
    from_array = skip.norm_ratios(model, batch, batch_size=3)
    for sum_tap in from_array:
        np.testing.assert_allclose(from_dataset[sum_tap]["skip_norm"], from_array[sum_tap]["skip_norm"], rtol=1e-6)
        np.testing.assert_allclose(from_dataset[sum_tap]["ratio"], from_array[sum_tap]["ratio"], rtol=1e-6)


def test_units_from_tap_names_follow_the_naming_rule():
    names = ["stem", "a/x", "a/+x", "b/preact", "b/skip", "b/branch", "b/+res", "head"]
    assert skip.residual_units_from_names(names) == [(None, "a/x", "a/+x"), ("b/skip", "b/branch", "b/+res")]
    with pytest.raises(ValueError, match="c/\\+y.*neither c/y nor c/branch"):
        skip.residual_units_from_names(["c/+y"])
    with pytest.raises(KeyError, match="missing"):
        skip.NormRatioAccumulator([("in", "u/f", "u/+f")]).update({"u/f": np.ones((1, 2))})
