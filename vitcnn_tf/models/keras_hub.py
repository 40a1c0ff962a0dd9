"""Our tapped ViT from a keras-hub ``ViTBackbone`` (or ``ViTImageClassifier``), with its weights.

keras-hub's ViT has the vit_jax architecture and layouts (pre-LN blocks, exact GELU, ``MultiHeadAttention``
kernels ``[D, H, dh]``), so every variable maps one to one (``KERAS_HUB_ROWS``); only the position embedding,
a ``[T, D]`` ``Embedding`` table there, gains a leading axis. A backbone with ``use_class_token=True`` gives a
``classifier="token"`` ViT, one without a ``"gap"`` ViT; an image classifier adds its pooling, its ``pre_logits``
(``intermediate_dim``, tanh) and its head. Biases switched off in keras-hub (``use_mha_bias``, ``use_mlp_bias``,
``use_patch_bias``) are zeros in ours. Our ``logits`` are the head's output before its ``activation``.
"""

import numpy as np

from vitcnn_tf.models import vit

_PATCHING = "vit_patching_and_embedding"
_POSEMB = "Transformer/posembed_input/pos_embedding"

# (keras-hub variable path, our release key, the keras-hub config switch that removes it or None). Block rows
# are relative to ``vit_encoder/transformer_block_{i + 1}`` there and ``Transformer/encoderblock_{i}`` here.
KERAS_HUB_ROWS = (
    (f"{_PATCHING}/patch_embedding/kernel", "embedding/kernel", None),
    (f"{_PATCHING}/patch_embedding/bias", "embedding/bias", "use_patch_bias"),
    (f"{_PATCHING}/class_token", "cls", "use_class_token"),
    (f"{_PATCHING}/position_embedding/embeddings", _POSEMB, None),
)
KERAS_HUB_BLOCK_ROWS = (
    ("ln_1/gamma", "LayerNorm_0/scale", None),
    ("ln_1/beta", "LayerNorm_0/bias", None),
    *((f"mha/{theirs}/{kind}", f"MultiHeadDotProductAttention_1/{ours}/{kind}",
       "use_mha_bias" if kind == "bias" else None)
      for theirs, ours in (("query", "query"), ("key", "key"), ("value", "value"), ("attention_output", "out"))
      for kind in ("kernel", "bias")),
    ("ln_2/gamma", "LayerNorm_2/scale", None),
    ("ln_2/beta", "LayerNorm_2/bias", None),
    *((f"mlp/dense_{index + 1}/{kind}", f"MlpBlock_3/Dense_{index}/{kind}",
       "use_mlp_bias" if kind == "bias" else None)
      for index in (0, 1) for kind in ("kernel", "bias")),
)
KERAS_HUB_NORM_ROWS = (
    ("vit_encoder/ln/gamma", "Transformer/encoder_norm/scale", None),
    ("vit_encoder/ln/beta", "Transformer/encoder_norm/bias", None),
)
# Of a ViTImageClassifier (the pre-logits rows only with its ``intermediate_dim``).
KERAS_HUB_CLASSIFIER_ROWS = (
    ("pre_logits/kernel", "pre_logits/kernel", None),
    ("pre_logits/bias", "pre_logits/bias", None),
    ("predictions/kernel", "head/kernel", None),
    ("predictions/bias", "head/bias", None),
)


def from_keras_hub(model, num_classes=1000, name="vit"):
    """Our ``ViT`` with the architecture and weights of the keras-hub ``model``.

    ``model``: a ``keras_hub.models.ViTBackbone`` (our head is then freshly initialised with ``num_classes``
    outputs) or a ``keras_hub.models.ViTImageClassifier`` (pooling, pre-logits and head taken from it). Images are
    ``[n, S, S, 3]`` channels last, preprocessed as for the keras-hub model. Raises ``TypeError`` for other models
    and ``ValueError`` naming the setting our ViT has no twin for (non-square images or patches, other than 3
    channels, a layer-norm epsilon other than 1e-6, GAP pooling over a class token, token pooling without one).
    """
    import keras_hub

    backbone, classifier = model, None
    if isinstance(model, keras_hub.models.ViTImageClassifier):
        backbone, classifier = model.backbone, model
    if not isinstance(backbone, keras_hub.models.ViTBackbone):
        raise TypeError(f"from_keras_hub: expected a keras_hub.models.ViTBackbone or ViTImageClassifier, got "
                        f"{type(model).__name__}")
    config = _config(backbone, classifier, num_classes)
    ours = vit.ViT(config, name=name)
    variables = ours.checkpoint_variables()
    for release_key, array in _arrays(backbone, classifier, config).items():
        variable = variables[release_key]
        variable.assign(np.zeros(variable.shape, variable.dtype) if array is None else array)
    return ours


def _config(backbone, classifier, num_classes):
    """The ``ViTConfig`` of a keras-hub backbone (and classifier); ValueError for settings with no twin."""
    owner = f"from_keras_hub: {backbone.name!r}"
    height, width, channels = (backbone.image_shape if backbone.data_format == "channels_last"
                               else tuple(backbone.image_shape[i] for i in (1, 2, 0)))
    patch_size = tuple(backbone.patch_size) if not isinstance(backbone.patch_size, int) else (backbone.patch_size,) * 2
    if height != width or patch_size[0] != patch_size[1]:
        raise ValueError(f"{owner}: image_shape {backbone.image_shape} and patch_size {backbone.patch_size} must be "
                         "square; our ViT takes square images and patches")
    if channels != 3:
        raise ValueError(f"{owner}: image_shape {backbone.image_shape} has {channels} channels; our ViT takes 3")
    if backbone.layer_norm_epsilon != 1e-6:
        raise ValueError(f"{owner}: layer_norm_epsilon={backbone.layer_norm_epsilon}; our ViT's layer norms use "
                         "1e-6 (as vit_jax)")
    classifier_kind = "token" if backbone.use_class_token else "gap"
    representation_size = None
    if classifier is not None:
        if classifier.pooling != classifier_kind:
            raise ValueError(f"from_keras_hub: {classifier.name!r} pools with {classifier.pooling!r} over a backbone "
                             f"with use_class_token={backbone.use_class_token}; our ViT pools the CLS token when "
                             "there is one and averages the patch tokens when there is none")
        representation_size, num_classes = classifier.intermediate_dim, classifier.num_classes
    return vit.ViTConfig(patch_size=patch_size[0], hidden_size=backbone.hidden_dim, mlp_dim=backbone.mlp_dim,
                         num_heads=backbone.num_heads, num_layers=backbone.num_layers, image_size=height,
                         num_classes=num_classes, classifier=classifier_kind,
                         representation_size=representation_size, dropout_rate=backbone.dropout_rate,
                         attention_dropout_rate=backbone.attention_dropout)


def _arrays(backbone, classifier, config):
    """{our release key: array} of the keras-hub weights; zeros for the biases switched off there."""
    theirs = {variable.path: variable for variable in backbone.weights}
    if classifier is not None:
        theirs.update({variable.path: variable for variable in classifier.weights})
    rows = list(KERAS_HUB_ROWS)
    for block in range(config.num_layers):
        rows += [(f"vit_encoder/transformer_block_{block + 1}/{path}", f"Transformer/encoderblock_{block}/{key}",
                  switch) for path, key, switch in KERAS_HUB_BLOCK_ROWS]
    rows += KERAS_HUB_NORM_ROWS
    if classifier is not None:
        rows += [row for row in KERAS_HUB_CLASSIFIER_ROWS if config.representation_size or "pre_logits" not in row[1]]
    arrays = {}
    for path, key, switch in rows:
        if switch is not None and not getattr(backbone, switch):
            if switch != "use_class_token":
                arrays[key] = None  # a bias switched off: zeros
            continue
        if path not in theirs:
            raise ValueError(f"from_keras_hub: {backbone.name!r} has no variable {path!r} (for our {key!r}); its "
                             f"variables: {sorted(theirs)[:8]} ...")
        arrays[key] = theirs[path].numpy()
    arrays[_POSEMB] = arrays[_POSEMB][None]  # Embedding table [T, D] -> [1, T, D]
    return arrays
