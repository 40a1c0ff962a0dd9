"""Loading timm-format ``.safetensors`` weights into our ViT, ResNetV2 and Mixer (no torch needed).

timm stores a PyTorch ``state_dict``: Linear weights ``[out, in]``, conv weights ``[out, in, h, w]`` and the
attention's query, key and value fused in one ``qkv`` Linear. One table per family (``vit_rows``,
``resnet_rows``, ``mixer_rows``; as timm's ``checkpoint_filter_fn`` maps foreign names) lists, for every timm key,
the release keys of our ``checkpoint_layout()`` it fills and the :class:`Conversion` between the layouts:

    timm key                              our release key(s)                                  conversion
    patch_embed.proj.weight / stem.proj   embedding/kernel, stem/kernel                        conv
    cls_token, pos_embed                  cls, Transformer/posembed_input/pos_embedding        same (pos resampled)
    blocks.i.norm1 / norm2                encoderblock_i/LayerNorm_0 / LayerNorm_2 (scale, bias)  same
    blocks.i.attn.qkv.weight / .bias      MultiHeadDotProductAttention_1/{query,key,value}      qkv split
    blocks.i.attn.proj.weight / .bias     MultiHeadDotProductAttention_1/out                    out projection
    blocks.i.mlp.fc1 / fc2                MlpBlock_3/Dense_0 / Dense_1                          linear
    norm, pre_logits.fc, head             encoder_norm, pre_logits, head                        linear / same
    stem.conv, stages.s.blocks.u.*        resnet/root_block, resnet/block{s+1}/unit{u+1:02d}/*  conv (BiT)
    head.fc (ResNetV2)                    resnet/head/conv2d                                    conv
    blocks.i.mlp_tokens / mlp_channels    MixerBlock_i/token_mixing / channel_mixing            linear

The ViT twins are timm's ``VisionTransformer`` with a CLS token (``global_pool="token"``) or without one
(``class_token=False, global_pool="avg", fc_norm=False``: the tokens are normalised before pooling, as vit_jax),
optionally with the pre-logits layer ``pre_logits.fc`` of older timm releases; the ResNetV2 twins are timm's BiT
models (``resnetv2_*_bit``: GroupNorm, weight-standardised convs, the ``"fixed"`` stem); the Mixer twins timm's
``MlpMixer``. Parts with no twin in our models (DeiT's distillation token, register tokens, LayerScale, a norm
after pooling, BatchNorm, ...) are refused with the reason (``FOREIGN_PARTS``). The number of attention heads is
not stored in the file: it must be the model's (``num_heads``). timm's BiT convs standardise with epsilon 1e-8,
ours with 1e-10 as the BiT release: the standardised kernels differ by a relative ``(1e-8 - 1e-10) / (2 var)``,
``var`` a filter's kernel variance.
"""

import dataclasses
import os
import re
import warnings

import numpy as np

from vitcnn_tf.models import checkpoint as checkpoint_lib
from vitcnn_tf.models import mixer, resnet_v2, vit


@dataclasses.dataclass(frozen=True)
class Conversion:
    """How one timm array becomes the arrays of one or more of our release keys.

    ``timm_shape(shapes)``: the timm shape that our variables of ``shapes`` come from; ``convert(array, shapes)``:
    the list of our arrays (one per release key) from the timm ``array``.
    """

    name: str
    timm_shape: object
    convert: object


def _split_qkv(array, shapes):
    # timm computes qkv.reshape(n, T, 3, H, dh): rows are ordered (q|k|v, head, head dim).
    # Our kernels are [D, H, dh], our biases [H, dh].
    if array.ndim == 1:
        return list(array.reshape(len(shapes), *shapes[0]))
    _, heads, head_dim = shapes[0]
    return list(array.reshape(len(shapes), heads, head_dim, -1).transpose(0, 3, 1, 2))


SAME = Conversion("same", lambda shapes: shapes[0], lambda array, shapes: [array])
LINEAR = Conversion("linear [out, in] -> [in, out]", lambda shapes: shapes[0][::-1], lambda array, shapes: [array.T])
CONV = Conversion("conv [out, in, h, w] -> [h, w, in, out]", lambda shapes: shapes[0][::-1][:2] + shapes[0][:2],
                  lambda array, shapes: [array.transpose(2, 3, 1, 0)])
QKV_KERNEL = Conversion("qkv split [3 D, D] -> 3 x [D, H, dh]",
                        lambda shapes: (len(shapes) * shapes[0][1] * shapes[0][2], shapes[0][0]), _split_qkv)
QKV_BIAS = Conversion("qkv split [3 D] -> 3 x [H, dh]", lambda shapes: (len(shapes) * shapes[0][0] * shapes[0][1],),
                      _split_qkv)
OUT_KERNEL = Conversion("out projection [D, H dh] -> [H, dh, D]",
                        lambda shapes: (shapes[0][2], shapes[0][0] * shapes[0][1]),
                        lambda array, shapes: [array.T.reshape(shapes[0])])


@dataclasses.dataclass(frozen=True)
class TimmRow:
    """One row of a family table: the timm ``key`` fills our release ``targets`` through ``conversion``;
    ``resampled``: the token count may differ (a position embedding resampled to the model's grid)."""

    key: str
    targets: tuple
    conversion: Conversion
    resampled: bool = False


# Parts of timm architectures that have no twin in our models: key pattern -> why.
FOREIGN_PARTS = {
    r"^dist_token$|^head_dist\.": "DeiT's distillation token and head (no distillation token in our ViT)",
    r"^reg_token$": "register tokens (our ViT has no register tokens)",
    r"^fc_norm\.": "a LayerNorm after pooling (timm fc_norm, the default of global_pool='avg'); our GAP ViT "
                   "normalises the tokens before pooling, as a timm model with fc_norm=False "
                   "(vit_base_patch16_gap_224)",
    r"^norm_pre\.": "a LayerNorm before the blocks (timm pre_norm, CLIP)",
    r"\.ls[12]\.gamma$|\.gamma_[12]$|\.ls[12]$": "LayerScale (timm init_values, DeiT III, CaiT)",
    r"^attn_pool\.": "attention pooling (timm global_pool='map')",
    r"\.[qk]_norm\.": "normalised queries and keys (timm qk_norm)",
    r"\.mlp\.norm\.": "a LayerNorm inside the MLP (timm scale_mlp_norm)",
    r"\.attn\.norm\.": "a LayerNorm inside the attention (timm scale_attn_norm)",
    r"^stem\.norm\.": "a LayerNorm after the patch embedding (timm stem_norm)",
    r"\.running_mean$|\.running_var$|\.num_batches_tracked$": "BatchNorm (our ResNetV2 is BiT's, with GroupNorm and "
                                                               "weight-standardised convs)",
    r"\.mlp_channels\.gate\.|\.alpha$|\.beta$": "a gated or affine MLP block (gMLP, ResMLP)",
}


def vit_rows(config):
    """The timm table of a ``ViTConfig``: ``[TimmRow]`` in timm's order."""
    rows = [TimmRow("patch_embed.proj.weight", ("embedding/kernel",), CONV),
            TimmRow("patch_embed.proj.bias", ("embedding/bias",), SAME)]
    if config.classifier == "token":
        rows.append(TimmRow("cls_token", ("cls",), SAME))
    rows.append(TimmRow("pos_embed", ("Transformer/posembed_input/pos_embedding",), SAME, resampled=True))
    for block in range(config.num_layers):
        ours, theirs = f"Transformer/encoderblock_{block}", f"blocks.{block}"
        attention = f"{ours}/MultiHeadDotProductAttention_1"
        rows += _layer_norm_rows(f"{theirs}.norm1", f"{ours}/LayerNorm_0")
        qkv = ("query", "key", "value")
        rows += [TimmRow(f"{theirs}.attn.qkv.weight", tuple(f"{attention}/{p}/kernel" for p in qkv), QKV_KERNEL),
                 TimmRow(f"{theirs}.attn.qkv.bias", tuple(f"{attention}/{p}/bias" for p in qkv), QKV_BIAS),
                 TimmRow(f"{theirs}.attn.proj.weight", (f"{attention}/out/kernel",), OUT_KERNEL),
                 TimmRow(f"{theirs}.attn.proj.bias", (f"{attention}/out/bias",), SAME)]
        rows += _layer_norm_rows(f"{theirs}.norm2", f"{ours}/LayerNorm_2")
        rows += _linear_rows(f"{theirs}.mlp.fc1", f"{ours}/MlpBlock_3/Dense_0")
        rows += _linear_rows(f"{theirs}.mlp.fc2", f"{ours}/MlpBlock_3/Dense_1")
    rows += _layer_norm_rows("norm", "Transformer/encoder_norm")
    if config.representation_size is not None:
        rows += _linear_rows("pre_logits.fc", "pre_logits")
    return rows + _linear_rows("head", "head")


def resnet_rows(config):
    """The timm BiT table of a ``ResNetV2Config`` (``resnetv2_50x1_bit`` naming): ``[TimmRow]``."""
    rows = [TimmRow("stem.conv.weight", ("resnet/root_block/standardized_conv2d/kernel",), CONV)]
    for stage, units in enumerate(config.block_counts):
        for unit in range(units):
            ours, theirs = f"resnet/block{stage + 1}/unit{unit + 1:02d}", f"stages.{stage}.blocks.{unit}"
            if unit == 0:  # the first unit of a stage changes the width (and the stride): a projection shortcut
                rows.append(TimmRow(f"{theirs}.downsample.conv.weight", (f"{ours}/a/proj/standardized_conv2d/kernel",),
                                    CONV))
            for index, part in enumerate("abc", start=1):
                rows += [TimmRow(f"{theirs}.norm{index}.weight", (f"{ours}/{part}/group_norm/gamma",), SAME),
                         TimmRow(f"{theirs}.norm{index}.bias", (f"{ours}/{part}/group_norm/beta",), SAME),
                         TimmRow(f"{theirs}.conv{index}.weight", (f"{ours}/{part}/standardized_conv2d/kernel",), CONV)]
    return rows + [TimmRow("norm.weight", ("resnet/group_norm/gamma",), SAME),
                   TimmRow("norm.bias", ("resnet/group_norm/beta",), SAME),
                   TimmRow("head.fc.weight", ("resnet/head/conv2d/kernel",), CONV),
                   TimmRow("head.fc.bias", ("resnet/head/conv2d/bias",), SAME)]


def mixer_rows(config):
    """The timm table of a ``MixerConfig``: ``[TimmRow]``."""
    rows = [TimmRow("stem.proj.weight", ("stem/kernel",), CONV), TimmRow("stem.proj.bias", ("stem/bias",), SAME)]
    for block in range(config.num_blocks):
        ours, theirs = f"MixerBlock_{block}", f"blocks.{block}"
        rows += _layer_norm_rows(f"{theirs}.norm1", f"{ours}/LayerNorm_0")
        rows += _linear_rows(f"{theirs}.mlp_tokens.fc1", f"{ours}/token_mixing/Dense_0")
        rows += _linear_rows(f"{theirs}.mlp_tokens.fc2", f"{ours}/token_mixing/Dense_1")
        rows += _layer_norm_rows(f"{theirs}.norm2", f"{ours}/LayerNorm_1")
        rows += _linear_rows(f"{theirs}.mlp_channels.fc1", f"{ours}/channel_mixing/Dense_0")
        rows += _linear_rows(f"{theirs}.mlp_channels.fc2", f"{ours}/channel_mixing/Dense_1")
    return rows + _layer_norm_rows("norm", "pre_head_layer_norm") + _linear_rows("head", "head")


FAMILY_ROWS = ((vit.ViT, vit_rows), (resnet_v2.ResNetV2, resnet_rows), (mixer.Mixer, mixer_rows))


def timm_layout(model):
    """The timm table of ``model`` (a ViT, ResNetV2 or Mixer): ``[TimmRow]``; TypeError for other models."""
    for model_class, rows in FAMILY_ROWS:
        if isinstance(model, model_class):
            return rows(model.config)
    raise TypeError(f"load_timm: model {getattr(model, 'name', model)!r} of type {type(model).__name__} has no timm "
                    f"table; expected a {', '.join(cls.__name__ for cls, _ in FAMILY_ROWS)}")


def load_timm(model, path):
    """Loads the timm ``.safetensors`` weights at ``path`` into ``model`` (all variables, or none on error).

    Raises ``ValueError`` naming the file and the keys (timm's names, with both shapes) that are of the wrong
    shape, missing from the file or unexpected in it (at most ``checkpoint.MAX_LISTED_KEYS`` of each), the parts
    of another architecture (``FOREIGN_PARTS``), and a file that is not a readable safetensors file;
    ``FileNotFoundError`` for a missing file. A position embedding of another grid is resampled to the model's
    (``model.adapt_checkpoint_array``, as ``load_npz``). A head of another class count, or a file without a head
    (timm ``num_classes=0``), is skipped with a warning, keeping the model's fresh head. Returns ``model``.
    """
    path = os.fspath(path)
    rows = timm_layout(model)
    arrays = _read_safetensors(path)
    foreign = _foreign_keys(arrays, rows)
    if foreign:
        raise ValueError(f"load_timm: {path} is a timm architecture with no twin in our {type(model).__name__}:\n"
                         + _describe_foreign(foreign))
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"load_timm: {path}: array {key!r} has non-numeric dtype {array.dtype}")
    variables = model.checkpoint_variables()
    shapes = {key: tuple(array.shape) for key, array in arrays.items()}
    comparison = _compare(model, rows, shapes, variables)
    if comparison.mismatched or comparison.missing or comparison.unexpected:
        raise ValueError(f"load_timm: {path} does not fit the {type(model).__name__} {model.name!r} "
                         f"({checkpoint_lib._describe_config(model)}):\n" + comparison.describe(shapes)
                         + _hint(comparison)
                         + "  Is it the checkpoint of another model, or do the config overrides differ from the "
                           "timm model's?")
    if comparison.other_head:
        warnings.warn(f"load_timm: {path}: the classifier head has another class count ("
                      + "; ".join(f"{key!r}: checkpoint {shapes[key]} vs model {comparison.expected[key]}"
                                  for key in comparison.other_head)
                      + "); keeping the model's freshly initialised head", stacklevel=2)
    if comparison.headless:
        warnings.warn(f"load_timm: {path} has no classifier head (a timm model with num_classes=0); keeping the "
                      "model's freshly initialised head", stacklevel=2)
    to_assign = {}
    for row in rows:
        if (comparison.other_head or comparison.headless) and set(row.targets) <= set(model.checkpoint_head_keys):
            continue
        array = arrays[row.key]
        converted = row.conversion.convert(array, [tuple(variables[target].shape) for target in row.targets])
        for target, part in zip(row.targets, converted):
            try:
                to_assign[target] = model.adapt_checkpoint_array(target, part)
            except ValueError as error:
                raise ValueError(f"load_timm: {path}: cannot adapt {row.key!r} of shape {array.shape} to the "
                                 f"model's {comparison.expected[row.key]}: {error}") from error
    for key, array in to_assign.items():
        variables[key].assign(np.asarray(array).astype(variables[key].dtype))
    return model


def check_timm(model, path):
    """Problems of the timm ``.safetensors`` file at ``path`` against ``model``, from the file's header alone (no
    data read; ``model`` may be built under ``keras.StatelessScope``): one string per problem naming the file,
    the key and both shapes; ``[]`` when ``load_timm`` would load it (a head of another class count or no head,
    which ``load_timm`` skips with a warning, is no problem)."""
    path = os.fspath(path)
    rows = timm_layout(model)
    try:
        shapes = _safetensors_shapes(path)
    except (OSError, ValueError) as error:
        return [str(error)]
    foreign = _foreign_keys(shapes, rows)
    problems = [f"{path}: key {key!r} has no twin in the {type(model).__name__}: {reason}"
                for key, reason in foreign.items()]
    comparison = _compare(model, rows, {key: shape for key, shape in shapes.items() if key not in foreign},
                          model.checkpoint_variables())
    problems += [f"{path}: key {key!r} has shape {shapes[key]}, the model expects {comparison.expected[key]}"
                 for key in comparison.mismatched]
    problems += [f"{path}: key {key!r} is missing (the model expects shape {comparison.expected[key]})"
                 for key in comparison.missing]
    problems += [f"{path}: key {key!r} {shapes[key]} is not in the {type(model).__name__}"
                 for key in comparison.unexpected]
    return problems


@dataclasses.dataclass(frozen=True)
class _Comparison:
    """The timm keys of a file against a table: ``expected`` {timm key: shape} of every row, the keys
    ``mismatched`` (wrong shape), ``other_head`` (a head of another class count), ``missing`` and ``unexpected``;
    ``headless``: the file has no head at all (its keys are then not ``missing``)."""

    expected: dict
    mismatched: list
    other_head: list
    missing: list
    unexpected: list
    headless: bool

    def describe(self, shapes):
        """Lines listing the mismatched, missing and unexpected keys with their shapes."""
        return (checkpoint_lib._describe_keys("of the wrong shape", self.mismatched,
                                              lambda key: f": checkpoint shape {shapes[key]}, model expects "
                                                          f"{self.expected[key]}")
                + checkpoint_lib._describe_keys("missing from the checkpoint", self.missing,
                                                lambda key: f" {self.expected[key]}")
                + checkpoint_lib._describe_keys("unexpected in the checkpoint", self.unexpected,
                                                lambda key: f" {shapes[key]}"))


def _compare(model, rows, shapes, variables):
    """The :class:`_Comparison` of a file's ``shapes`` {timm key: shape} with the table ``rows`` of ``model``."""
    head_keys = set(model.checkpoint_head_keys)
    expected, mismatched, other_head = {}, [], []
    for row in rows:
        expected[row.key] = tuple(row.conversion.timm_shape([tuple(variables[t].shape) for t in row.targets]))
        if row.key not in shapes or _fits(row, shapes[row.key], expected[row.key]):
            continue
        (other_head if set(row.targets) <= head_keys else mismatched).append(row.key)
    head_rows = [row.key for row in rows if set(row.targets) <= head_keys]
    headless = not any(key in shapes for key in head_rows)
    missing = [row.key for row in rows if row.key not in shapes and not (headless and row.key in head_rows)]
    unexpected = sorted(set(shapes) - set(expected))
    if mismatched:  # then a head of another shape is part of the same misfit, not another class count
        mismatched, other_head = [row.key for row in rows if row.key in mismatched + other_head], []
    return _Comparison(expected, mismatched, other_head, missing, unexpected, headless)


def _fits(row, shape, expected):
    """Whether a timm array of ``shape`` fits ``expected`` (a position embedding may differ in token count)."""
    shape = tuple(shape)
    if row.resampled and len(shape) == len(expected) == 3:
        return shape[::2] == expected[::2]
    return shape == expected


def _hint(comparison):
    """A line on the CLS token when the file and the ViT disagree on it, else ``""``."""
    if "cls_token" in comparison.unexpected:
        return "  The file has a CLS token: build the ViT with classifier='token'.\n"
    if "cls_token" in comparison.missing:
        return "  The file has no CLS token (timm class_token=False): build the ViT with classifier='gap'.\n"
    return ""


def _foreign_keys(shapes, rows):
    """{timm key -> why it has no twin} for the keys outside the table that belong to another architecture."""
    known = {row.key for row in rows}
    foreign = {}
    for key in sorted(set(shapes) - known):
        for pattern, reason in FOREIGN_PARTS.items():
            if re.search(pattern, key):
                foreign[key] = reason
                break
    return foreign


def _describe_foreign(foreign):
    """Lines grouping the keys of ``foreign`` {timm key: reason} by reason."""
    reasons = {}
    for key, reason in foreign.items():
        reasons.setdefault(reason, []).append(key)
    limit = checkpoint_lib.MAX_LISTED_KEYS
    return "".join(f"  {reason}: {', '.join(map(repr, keys[:limit]))}"
                   + (f" and {len(keys) - limit} more" if len(keys) > limit else "") + "\n"
                   for reason, keys in reasons.items())


def _read_safetensors(path):
    """{key -> NumPy array} of a ``.safetensors`` file; FileNotFoundError / ValueError naming ``path``. bfloat16
    arrays, which NumPy has no type for, are decoded with ``ml_dtypes`` into float32 (exactly)."""
    import ml_dtypes
    import safetensors

    _require_file(path)
    try:
        with safetensors.safe_open(path, framework="np") as handle:
            dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
            arrays = {key: handle.get_tensor(key) for key, dtype in dtypes.items() if dtype != "BF16"}
        if len(arrays) < len(dtypes):
            with open(path, "rb") as file:
                for key, item in safetensors.deserialize(file.read()):
                    if dtypes[key] == "BF16":
                        arrays[key] = np.frombuffer(item["data"], ml_dtypes.bfloat16).reshape(item["shape"]) \
                            .astype(np.float32)
    except Exception as error:  # safetensors raises its own SafetensorError (and others) for unreadable files
        raise ValueError(f"load_timm: {path} is not a readable safetensors file ({type(error).__name__}: "
                         f"{error})") from error
    return arrays


def _safetensors_shapes(path):
    """{key -> shape} of a ``.safetensors`` file, from its header alone."""
    import safetensors

    _require_file(path)
    try:
        with safetensors.safe_open(path, framework="np") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError (and others) for unreadable files
        raise ValueError(f"load_timm: {path} is not a readable safetensors file ({type(error).__name__}: "
                         f"{error})") from error


def _require_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_timm: no file {path!r} (absolute: {os.path.abspath(path)})")


def _layer_norm_rows(timm_key, release_key):
    return [TimmRow(f"{timm_key}.weight", (f"{release_key}/scale",), SAME),
            TimmRow(f"{timm_key}.bias", (f"{release_key}/bias",), SAME)]


def _linear_rows(timm_key, release_key):
    return [TimmRow(f"{timm_key}.weight", (f"{release_key}/kernel",), LINEAR),
            TimmRow(f"{timm_key}.bias", (f"{release_key}/bias",), SAME)]
