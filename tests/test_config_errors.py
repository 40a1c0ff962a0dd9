"""Model configs given values of the wrong type: a ValueError naming the field and what was expected."""

import pytest

from vitcnn_tf.models import MixerConfig, ResNetV2Config, ViTConfig
from vitcnn_tf.models.config import ConfigTypeError

VIT = "ViT-Ti/16"


@pytest.mark.parametrize("field", ["dropout_rate", "attention_dropout_rate"])
@pytest.mark.parametrize("value", ["0.1", None, [0.1], True, float("nan"), 1.0, -0.1])
def test_vit_dropout_rates_must_be_numbers_in_0_1(field, value):
    """``dropout_rate='0.1'`` used to raise a bare ``TypeError`` from comparing a string with a float."""
    with pytest.raises(ValueError, match=rf"ViTConfig: {field} must be in \[0, 1\) \(a real number\), got "):
        ViTConfig.from_name(VIT, **{field: value})


def test_vit_dropout_rate_as_a_string_names_its_type():
    with pytest.raises(ConfigTypeError, match=r"dropout_rate must be in \[0, 1\) \(a real number\), got '0\.1' "
                                              r"\(str\)") as error:
        ViTConfig.from_name(VIT, dropout_rate="0.1")
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)


@pytest.mark.parametrize("value, shown", [(None, r"None \(NoneType\)"), ("01", r"'01' \(str\)"),
                                          (2.0, r"2\.0 \(float\)"), (object(), r"<object object at .*> \(object\)")])
def test_vit_skip_blocks_removed_must_be_a_sequence_of_indices(value, shown):
    """``skip_blocks_removed=None`` used to raise a bare ``TypeError: 'NoneType' object is not iterable``."""
    with pytest.raises(ValueError, match=r"ViTConfig: skip_blocks_removed must be a sequence of block indices in "
                                         rf"0\.\.11, e\.g\. \(\) or \(0,\), got {shown}"):
        ViTConfig.from_name(VIT, skip_blocks_removed=value)


def test_vit_skip_blocks_removed_single_index_suggests_a_tuple():
    with pytest.raises(ValueError, match=r"got 3 \(int\); write \(3,\)"):
        ViTConfig.from_name(VIT, skip_blocks_removed=3)


def test_vit_skip_blocks_removed_bad_entries_are_listed():
    with pytest.raises(ValueError, match=r"skip_blocks_removed has invalid block indices \['1', 12\]; blocks are "
                                         r"numbered 0\.\.11 \(num_layers=12\)"):
        ViTConfig.from_name(VIT, skip_blocks_removed=["1", 12, 2])


def test_vit_skip_blocks_removed_accepts_any_iterable_of_indices():
    assert ViTConfig.from_name(VIT, skip_blocks_removed=(i for i in (5, 1, 5))).skip_blocks_removed == (1, 5)
    assert ViTConfig.from_name(VIT, skip_blocks_removed=range(2)).skip_blocks_removed == (0, 1)


@pytest.mark.parametrize("config_class, preset, field", [
    (ViTConfig, VIT, "hidden_size"), (ViTConfig, VIT, "representation_size"),
    (ResNetV2Config, "BiT-R50x1", "num_groups"), (ResNetV2Config, "BiT-R50x1", "image_size"),
    (MixerConfig, "Mixer-B/16", "num_blocks"),
])
@pytest.mark.parametrize("value, shown", [("4", r"'4' \(str\)"), (4.0, r"4\.0 \(float\)"), ([4], r"\[4\] \(list\)")])
def test_integer_fields_of_the_wrong_type_name_the_field_and_type(config_class, preset, field, value, shown):
    with pytest.raises(ValueError, match=rf"{config_class.__name__}: {field} must be a positive integer, got {shown}"):
        config_class.from_name(preset, **{field: value})


@pytest.mark.parametrize("value", [None, "1", [1]])
def test_resnet_width_factor_of_the_wrong_type(value):
    with pytest.raises(ValueError, match=r"ResNetV2Config: width_factor must be a positive number, got "):
        ResNetV2Config.from_name("BiT-R50x1", width_factor=value)


@pytest.mark.parametrize("value", [None, 3, "3463", [3, None]])
def test_resnet_block_counts_of_the_wrong_type(value):
    with pytest.raises(ValueError, match=r"ResNetV2Config: block_counts must be a non-empty sequence of positive "
                                         r"integers"):
        ResNetV2Config.from_name("BiT-R50x1", block_counts=value)


@pytest.mark.parametrize("config_class, field, value", [
    (ViTConfig, "classifier", ["token"]), (ViTConfig, "classifier", None),
    (ResNetV2Config, "stem", ["bit"]), (ResNetV2Config, "stem", None),
])
def test_choice_fields_of_the_wrong_type(config_class, field, value):
    preset = VIT if config_class is ViTConfig else "BiT-R50x1"
    with pytest.raises(ValueError, match=rf"{config_class.__name__}: {field} must be one of "):
        config_class.from_name(preset, **{field: value})


@pytest.mark.parametrize("name", [None, ["ViT-Ti/16"], 16])
def test_preset_name_of_the_wrong_type(name):
    with pytest.raises(ValueError, match=r"ViTConfig\.from_name: unknown preset"):
        ViTConfig.from_name(name)
