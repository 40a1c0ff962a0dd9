"""BiT ResNetV2 (Kolesnikov et al., 2020): pre-activation bottleneck ResNet with GroupNorm and weight standardization.

Architecture facts follow the public BiT release (google-research/big_transfer):

* root ("bit" stem): zero-pad 3, 7x7/2 weight-standardized conv, zero-pad 1, 3x3/2 max-pool (VALID). The zero padding
  before the pool is part of the release (it differs from a -inf "SAME" pool padding on negative activations).
  The "small" stem for 32x32 inputs is a zero-padded 3x3/1 weight-standardized conv without pooling.
* unit (bottleneck v2): ``z -> preact = relu(GN_a(z))``; the shortcut is ``z`` itself, or a 1x1 projection of
  ``preact`` when the stride or the channel count changes; the branch is
  ``conv1x1 -> GN_b, relu -> pad 1, conv3x3/stride -> GN_c, relu -> conv1x1``; the output is ``shortcut + branch``.
  The stride of a stage's first unit sits on the 3x3 conv (and on the projection). Stage 1 has stride 1, the others 2.
* GroupNorm: ``num_groups`` groups (32 in BiT), epsilon 1e-5; one gamma / beta per channel.
* weight standardization: the HWIO kernel is standardized over H, W, I per output channel,
  ``(k - mean) / sqrt(var + 1e-10)``; convolutions have no bias.
* head: final GN + ReLU, global average pooling, then a 1x1 conv with bias (release key ``resnet/head/conv2d``,
  kernel ``[1, 1, C, num_classes]``), zero-initialised as in BiT.

Shapes: images ``[n, image_size, image_size, 3]`` float32 in [-1, 1]; logits ``[n, num_classes]``.
"""

import dataclasses
import math
import numbers

import keras
from keras import ops

from vitcnn_tf.models import base, checkpoint_keys
from vitcnn_tf.models import config as config_lib

__all__ = ["RESNET_V2_PRESETS", "ResNetV2Config", "ResNetV2", "StandardizedConv2D"]

_STEMS = ("bit", "small")

RESNET_V2_PRESETS = {
    # BiT-M/S R50x1 and R152x2 with an ImageNet-1k head; the released BiT-M heads have 21843 classes
    # (``from_name("BiT-R50x1", num_classes=21843)`` to load a BiT-M head).
    "BiT-R50x1": dict(block_counts=(3, 4, 6, 3), width_factor=1, stem="bit", image_size=224, num_classes=1000,
                      num_groups=32),
    "BiT-R152x2": dict(block_counts=(3, 8, 36, 3), width_factor=2, stem="bit", image_size=224, num_classes=1000,
                       num_groups=32),
    # CPU scale: four stages of one unit, channels 16 (stem), bottlenecks 16/32/64/128, outputs 64/128/256/512.
    "ResNetV2-CPU": dict(block_counts=(1, 1, 1, 1), width_factor=0.25, stem="small", image_size=32, num_classes=10,
                         num_groups=8),
}


@dataclasses.dataclass(frozen=True)
class ResNetV2Config:
    """Hyper-parameters of a BiT ResNetV2.

    block_counts: units per stage, e.g. ``(3, 4, 6, 3)`` for R50.
    width_factor: the root has ``64 * w`` channels; stage ``b`` (0-based) has bottleneck width ``64 * w * 2**b``
        and output width ``256 * w * 2**b``. May be fractional if every width is an integer divisible by
        ``num_groups``.
    stem: ``"bit"`` (7x7/2 conv + 3x3/2 max-pool, as the release) or ``"small"`` (3x3/1 conv, for 32x32 inputs).
    image_size: square input side in pixels.
    num_classes: classifier outputs.
    num_groups: GroupNorm groups (32 in BiT).
    """

    block_counts: tuple = (3, 4, 6, 3)
    width_factor: float = 1
    stem: str = "bit"
    image_size: int = 224
    num_classes: int = 1000
    num_groups: int = 32

    def __post_init__(self):
        counts = self.block_counts
        if (isinstance(counts, (str, bytes)) or not hasattr(counts, "__len__") or len(counts) == 0
                or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c > 0 for c in counts)):
            raise ValueError(f"ResNetV2Config: block_counts must be a non-empty sequence of positive integers "
                             f"(units per stage), got {counts!r}")
        object.__setattr__(self, "block_counts", tuple(int(c) for c in counts))
        if isinstance(self.width_factor, bool) or not isinstance(self.width_factor, numbers.Real) \
                or not self.width_factor > 0:
            raise ValueError(f"ResNetV2Config: width_factor must be a positive number, got {self.width_factor!r}")
        if self.stem not in _STEMS:
            raise ValueError(f"ResNetV2Config: stem must be one of {_STEMS}, got {self.stem!r}")
        for field in ("image_size", "num_classes", "num_groups"):
            config_lib.require_positive_int("ResNetV2Config", field, getattr(self, field))
        root = 64 * self.width_factor
        if not math.isclose(root, round(root)) or round(root) == 0:
            raise ValueError(f"ResNetV2Config: width_factor={self.width_factor} gives a non-integer root width "
                             f"64 * w = {root}; choose w so that 64 * w is a positive integer")
        widths = {"root": self.root_channels}
        for stage, (mid, out) in enumerate(zip(self.bottleneck_channels, self.output_channels), start=1):
            widths[f"block{stage} bottleneck"] = mid
            widths[f"block{stage} output"] = out
        for where, channels in widths.items():
            if channels % self.num_groups:
                raise ValueError(f"ResNetV2Config: num_groups={self.num_groups} must divide every GroupNorm width, "
                                 f"but the {where} width is {channels} (width_factor={self.width_factor})")

    @property
    def root_channels(self):
        """Channels of the root conv: ``64 * width_factor``."""
        return int(round(64 * self.width_factor))

    @property
    def bottleneck_channels(self):
        """Per stage, the width of the 1x1 / 3x3 bottleneck convs: ``64 * w * 2**b``."""
        return tuple(self.root_channels * 2**b for b in range(len(self.block_counts)))

    @property
    def output_channels(self):
        """Per stage, the unit output width: ``256 * w * 2**b``."""
        return tuple(4 * c for c in self.bottleneck_channels)

    @classmethod
    def preset_names(cls):
        """Names accepted by ``from_name``."""
        return tuple(RESNET_V2_PRESETS)

    @classmethod
    def from_name(cls, name, **overrides):
        """The preset ``name`` (``"BiT-R50x1"``, ``"BiT-R152x2"``, ``"ResNetV2-CPU"``) with fields replaced."""
        return config_lib.config_from_preset(cls, RESNET_V2_PRESETS, name, overrides)


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class StandardizedConv2D(keras.layers.Conv2D):
    """Conv2D whose HWIO kernel is standardized per output channel before use (weight standardization).

    ``k_std = (k - mean_hwi(k)) / sqrt(var_hwi(k) + epsilon)``; computed in float32 and cast to the input dtype.
    """

    def __init__(self, filters, kernel_size, epsilon=1e-10, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.epsilon = epsilon

    def standardized_kernel(self, kernel=None):
        """The standardized ``[kh, kw, in, out]`` kernel (of ``self.kernel`` unless ``kernel`` is given)."""
        kernel = ops.cast(self.kernel if kernel is None else kernel, "float32")
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = ops.mean(ops.square(kernel - mean), axis=(0, 1, 2), keepdims=True)
        return (kernel - mean) / ops.sqrt(var + self.epsilon)

    def convolution_op(self, inputs, kernel):
        standardized = ops.cast(self.standardized_kernel(kernel), inputs.dtype)
        return super().convolution_op(inputs, standardized)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class ChannelSumGroupNormalization(keras.layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` (same weights ``gamma`` / ``beta`` ``[C]``, same outputs up to float32
    rounding) for channels-last ``[n, h, w, C]`` inputs, computed from per-channel sums over ``h, w``.

    Keras reshapes to ``[n, h, w, G, C / G]`` and reduces over three axes at once, a strided reduction that took
    about 4 times as long on a CPU as these contiguous ones (docs/reproduction.md). The group statistics are the
    per-channel sums added up within each group; the variance is the mean squared deviation from the group mean
    (two passes, as exact as Keras' moments). Other ranks and axes use Keras' own computation.
    """

    def call(self, inputs):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))  # float16 / bfloat16 upcast, as Keras
        channels = x.shape[-1]
        size = channels // self.groups
        count = ops.cast(ops.shape(x)[1] * ops.shape(x)[2] * size, x.dtype)

        def per_channel(group_values):  # [n, G] -> [n, 1, 1, C]
            return ops.reshape(ops.repeat(group_values, size, axis=-1), (-1, 1, 1, channels))

        def group_sums(channel_values):  # [n, C] -> [n, G]
            return ops.sum(ops.reshape(channel_values, (-1, self.groups, size)), axis=-1)

        mean = group_sums(ops.sum(x, axis=(1, 2))) / count
        centred = x - per_channel(mean)
        variance = group_sums(ops.sum(ops.square(centred), axis=(1, 2))) / count
        scale = per_channel(ops.rsqrt(variance + self.epsilon))
        if self.scale:
            scale = scale * ops.cast(self.gamma, x.dtype)
        outputs = centred * scale
        if self.center:
            outputs = outputs + ops.cast(self.beta, x.dtype)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class ResNetV2(base.TappedModel):
    """BiT ResNetV2 as a Keras functional model: ``model(images [n, S, S, 3]) -> logits [n, num_classes]``.

    ``config`` is a ``ResNetV2Config`` (or its dict). ``model.taps`` (ordered, forward order), with ``n`` examples,
    ``C_b`` the output width of stage ``b``:

        root/conv               [n, h, w, 64 w]  root conv output (before the max-pool of the "bit" stem)
        root/pool               [n, h, w, 64 w]  after the max-pool ("bit" stem only)
        blockB/unitUU/preact    [n, h, w, C_in]  relu(GN(z)) of the unit input z
        blockB/unitUU/skip      [n, h', w', C_b] the shortcut: z itself, or the 1x1 projection of preact
        blockB/unitUU/conv1     [n, h, w, C_b/4] 1x1 conv
        blockB/unitUU/conv2     [n, h', w', C_b/4] 3x3 conv (carries the stage stride)
        blockB/unitUU/branch    [n, h', w', C_b] residual branch output f(z) (last 1x1 conv)
        blockB/unitUU/+res      [n, h', w', C_b] skip + branch, the unit output
        pre_head_norm           [n, h, w, C_last] relu(GN(x)) before pooling
        pre_logits              [n, C_last]      global average pool
        logits                  [n, num_classes]
    """

    config_class = ResNetV2Config

    def __init__(self, config, name="resnet_v2", **kwargs):
        config = self.coerce_config(config)
        builder = _GraphBuilder(config)
        images = keras.Input(shape=(config.image_size, config.image_size, 3), name="images")
        taps = builder.build(images)
        super().__init__(config, images, taps, name=name, **kwargs)
        self._checkpoint_layout = tuple(builder.checkpoint_layout)

    @property
    def checkpoint_head_keys(self):
        """Release keys of the classifier head (a 1x1 conv in BiT)."""
        return ("resnet/head/conv2d/kernel", "resnet/head/conv2d/bias")

    @property
    def residual_taps(self):
        """``[(skip tap, branch tap, sum tap)]`` of every residual unit, in forward order."""
        units = [name[: -len("/+res")] for name in self.taps if name.endswith("/+res")]
        return [(f"{unit}/skip", f"{unit}/branch", f"{unit}/+res") for unit in units]

    def checkpoint_layout(self):
        """The BiT release table: ``[(.npz key, layer name, weight attribute)]``, recorded while the graph was
        wired."""
        return list(self._checkpoint_layout)


class _GraphBuilder:
    """Wires the functional graph of a ResNetV2, recording taps and the release-key -> layer-weight layout."""

    def __init__(self, config):
        self.config = config
        self.taps = {}
        self.checkpoint_layout = []

    def build(self, images):
        """Wires the graph on ``images``; returns the ordered taps (the last one is ``logits``)."""
        x = self._root(images)
        in_channels = self.config.root_channels
        for stage, (units, mid) in enumerate(zip(self.config.block_counts, self.config.bottleneck_channels), 1):
            for unit in range(1, units + 1):
                stride = 2 if (stage > 1 and unit == 1) else 1
                x = self._unit(x, f"block{stage}/unit{unit:02d}", in_channels, mid, stride)
                in_channels = 4 * mid
        self._head(x)
        return self.taps

    def _conv(self, key, name, filters, kernel_size, strides=1):
        self.checkpoint_layout += checkpoint_keys.standardized_conv_keys(f"resnet/{key}", name)
        return StandardizedConv2D(filters, kernel_size, strides=strides, padding="valid", use_bias=False, name=name)

    def _group_norm(self, key, name):
        self.checkpoint_layout += checkpoint_keys.group_norm_keys(f"resnet/{key}", name)
        return ChannelSumGroupNormalization(groups=self.config.num_groups, epsilon=1e-5, name=name)

    def _root(self, images):
        width = self.config.root_channels
        if self.config.stem == "bit":
            x = keras.layers.ZeroPadding2D(3, name="root_conv_pad")(images)
            x = self._conv("root_block", "root_conv", width, 7, strides=2)(x)
            self.taps["root/conv"] = x
            x = keras.layers.ZeroPadding2D(1, name="root_pool_pad")(x)
            x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="root_pool")(x)
            self.taps["root/pool"] = x
        else:
            x = keras.layers.ZeroPadding2D(1, name="root_conv_pad")(images)
            x = self._conv("root_block", "root_conv", width, 3, strides=1)(x)
            self.taps["root/conv"] = x
        return x

    def _unit(self, z, tap_prefix, in_channels, mid, stride):
        """One pre-activation bottleneck unit: ``[n, h, w, in_channels] -> [n, h/stride, w/stride, 4 * mid]``."""
        key = tap_prefix  # release keys use the same blockB/unitUU path
        name = tap_prefix.replace("/", "_")
        preact = self._group_norm(f"{key}/a/group_norm", f"{name}_a_norm")(z)
        preact = keras.layers.ReLU(name=f"{name}_preact")(preact)
        if stride != 1 or in_channels != 4 * mid:
            skip = self._conv(f"{key}/a/proj", f"{name}_skip", 4 * mid, 1, strides=stride)(preact)
        else:
            skip = keras.layers.Identity(name=f"{name}_skip")(z)
        conv1 = self._conv(f"{key}/a", f"{name}_conv1", mid, 1)(preact)
        h = self._group_norm(f"{key}/b/group_norm", f"{name}_b_norm")(conv1)
        h = keras.layers.ReLU(name=f"{name}_b_relu")(h)
        h = keras.layers.ZeroPadding2D(1, name=f"{name}_b_pad")(h)
        conv2 = self._conv(f"{key}/b", f"{name}_conv2", mid, 3, strides=stride)(h)
        h = self._group_norm(f"{key}/c/group_norm", f"{name}_c_norm")(conv2)
        h = keras.layers.ReLU(name=f"{name}_c_relu")(h)
        branch = self._conv(f"{key}/c", f"{name}_branch", 4 * mid, 1)(h)
        out = keras.layers.Add(name=f"{name}_add")([skip, branch])
        for tap, tensor in (("preact", preact), ("skip", skip), ("conv1", conv1), ("conv2", conv2),
                            ("branch", branch), ("+res", out)):
            self.taps[f"{tap_prefix}/{tap}"] = tensor
        return out

    def _head(self, x):
        channels = self.config.output_channels[-1]
        x = self._group_norm("group_norm", "pre_head_gn")(x)
        x = keras.layers.ReLU(name="pre_head_norm")(x)
        self.taps["pre_head_norm"] = x
        pooled = keras.layers.GlobalAveragePooling2D(name="pre_logits")(x)
        self.taps["pre_logits"] = pooled
        x = keras.layers.Reshape((1, 1, channels), name="head_reshape")(pooled)
        self.checkpoint_layout += checkpoint_keys.dense_keys("resnet/head/conv2d", "head_conv")
        x = keras.layers.Conv2D(self.config.num_classes, 1, use_bias=True, kernel_initializer="zeros",
                                bias_initializer="zeros", name="head_conv")(x)
        logits = keras.layers.Reshape((self.config.num_classes,), name="logits")(x)
        self.taps["logits"] = logits
