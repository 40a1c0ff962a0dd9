"""The models of the analyses of :mod:`vitcnn_tf.paper`: labels and roles, families, image sizes, normalised
depths, block ticks and the taps each analysis reads.

Models are Keras models of the :mod:`vitcnn_tf.models` registry (a ViT, ResNetV2 or Mixer, named by
``vitcnn_tf.models.model_family``). What is read from the data (arrays, passes, batches, accuracies) is in
:mod:`vitcnn_tf.paper.evaluation`.
"""

import keras
import numpy as np

from vitcnn_tf import representations
from vitcnn_tf.analysis import skip
from vitcnn_tf.models import model_family


def family(model):
    """``"vit"``, ``"resnet"``, ``"mixer"`` (``vitcnn_tf.models.model_family``), or ``"other"`` for a model outside
    the registry."""
    try:
        return model_family(model)
    except ValueError:
        return "other"


def first_of_family(models, name):
    """Label of the first model of family ``name`` (``"vit"``, ``"resnet"``, ``"mixer"``) in ``models`` (a dict
    ``{label: keras.Model}``), or None."""
    return next((label for label, model in models.items() if family(model) == name), None)


def check_models(models, argument="models"):
    """``models`` as a dict ``{label: keras.Model}``; ValueError naming ``argument`` for an empty or non-dict input."""
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{argument}: expected a non-empty dict {{label: keras.Model}}, got {type(models).__name__} "
                         f"{models!r:.80}")
    return models


def require_family(model, label, argument, *families, reason=""):
    """``model``'s family; ValueError naming ``argument`` and ``label`` unless it is one of ``families``."""
    found = family(model)
    if found not in families:
        raise ValueError(f"{argument}: {label!r} is a {found} model, expected {' or '.join(families)}"
                         + (f" ({reason})" if reason else ""))
    return found


def labeled(value, role):
    """``(label, keras.Model)`` of a role argument: a model (labelled by its ``name``) or a ``(label, model)``
    pair; ``role`` names the argument in errors."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], keras.Model):
            raise TypeError(f"{role}: expected a keras.Model or a (label, keras.Model) pair, got {value!r}")
        return value[0], value[1]
    if not isinstance(value, keras.Model):
        raise TypeError(f"{role}: expected a keras.Model or a (label, keras.Model) pair, got {type(value).__name__}")
    return value.name, value


def labeled_group(values, role):
    """``{label: model}`` of a role taking several models: a ``{label: model}`` dict or a sequence of models /
    ``(label, model)`` pairs (None: empty); duplicate labels are an error naming ``role``."""
    if values is None:
        return {}
    items = values.items() if isinstance(values, dict) else [labeled(value, role) for value in values]
    group = {}
    for label, model in items:
        label, model = labeled((label, model), role)
        if label in group:
            raise ValueError(f"{role}: two models are labelled {label!r}; labels must be unique")
        group[label] = model
    return group


def unique_labels(*groups):
    """``{label: model}`` of several ``{label: model}`` groups in order; a label used twice is an error."""
    merged = {}
    for group in groups:
        for label, model in group.items():
            if label in merged:
                raise ValueError(f"models: the label {label!r} is used by two models; give (label, model) pairs")
            merged[label] = model
    return merged


def is_cls_vit(model):
    """True for a ViT classifying from its CLS token."""
    return family(model) == "vit" and model.config.classifier == "token"


def is_gap_vit(model):
    """True for a ViT classifying from the mean of its tokens (global average pooling)."""
    return family(model) == "vit" and model.config.classifier == "gap"


def token_role_models(cls_vit, gap_vit=None, resnet=None):
    """``{label: model}`` of the Section 7 roles, checked: ``cls_vit`` a CLS-token ViT, ``gap_vit`` (optional) a
    ViT with ``classifier='gap'``, ``resnet`` (optional) a ResNet, each a model or a ``(label, model)`` pair, with
    distinct labels and one input size. Returns ``(models, cls label, gap label or None)``."""
    cls_label, cls_model = labeled(cls_vit, "cls_vit")
    require_family(cls_model, cls_label, "cls_vit", "vit")
    if not is_cls_vit(cls_model):
        raise ValueError(f"cls_vit: {cls_label!r} classifies with {cls_model.config.classifier!r}, expected a "
                         "CLS-token ViT (classifier='token')")
    models, gap_label = {cls_label: cls_model}, None
    if gap_vit is not None:
        gap_label, gap_model = labeled(gap_vit, "gap_vit")
        if not is_gap_vit(gap_model):
            raise ValueError(f"gap_vit: {gap_label!r} is not a ViT with classifier='gap'")
        models = unique_labels(models, {gap_label: gap_model})
    if resnet is not None:
        resnet_label, resnet_model = labeled(resnet, "resnet")
        require_family(resnet_model, resnet_label, "resnet", "resnet")
        models = unique_labels(models, {resnet_label: resnet_model})
    shared_image_size(models)
    return models, cls_label, gap_label


def token_roles(models, argument="models"):
    """``{"cls_vit", "gap_vit", "resnet": label or None}`` of ``{label: model}`` (the Section 7 roles): one
    CLS-token ViT (required), at most one other (GAP) ViT and at most one ResNet; ValueError naming ``argument``."""
    roles = {"cls_vit": None, "gap_vit": None, "resnet": None}
    for label, model in models.items():
        found = family(model)
        role = {"vit": "cls_vit" if is_cls_vit(model) else "gap_vit", "resnet": "resnet"}.get(found)
        if role is None or roles[role] is not None:
            raise ValueError(f"{argument}: {label!r} ({found}) has no free role; give one CLS-token ViT, at most one "
                             "GAP ViT and at most one ResNet")
        roles[role] = label
    if roles["cls_vit"] is None:
        raise ValueError(f"{argument}: need a CLS-token ViT, got {list(models)}")
    return roles


def token_role_pairs(models, argument="models"):
    """``(cls_vit, gap_vit, resnet)``, each a ``(label, model)`` pair or None, of ``{label: model}`` by
    :func:`token_roles`: the first arguments of the Section 7 ``run`` functions."""
    roles = token_roles(models, argument)
    return tuple(None if roles[role] is None else (roles[role], models[roles[role]])
                 for role in ("cls_vit", "gap_vit", "resnet"))


def image_size(model, label=None):
    """Input side length ``S`` of an image model with input ``[n, S, S, C]``; ValueError naming ``label`` (default
    the model's name) otherwise."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(f"model {label or model.name!r}: expected a square image input [n, S, S, C], got {shape}")
    return int(shape[1])


def shared_image_size(models):
    """The input side ``S`` shared by ``models`` (``{label: model}`` with inputs ``[n, S, S, C]``)."""
    sizes = {label: image_size(model, label) for label, model in models.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"models must share one input size, got {sizes}")
    return next(iter(sizes.values()))


def normalised_depths(count, by_division=False):
    """``[count]`` positions ``0 .. 1`` of ``count`` layers in forward order (``[0.]`` for one layer).

    ``np.linspace(0, 1, count)`` (which multiplies by the step ``1 / (count - 1)``); with ``by_division``,
    ``arange(count) / (count - 1)``, which differs from it in the last bit for most counts. The saved depth arrays
    (Sections 6 to 8) and the figures use the first, the Section 4 finding ``mean_best_depth`` the second.
    """
    if by_division:
        return np.arange(count) / max(count - 1, 1)
    return np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)


def extreme_blocks(num_blocks):
    """``(lowest, highest)`` block index lists, ``k = max(1, num_blocks // 3)`` each (2 of 6, 4 of 12, 8 of 24)."""
    k = max(1, num_blocks // 3)
    return list(range(k)), list(range(num_blocks - k, num_blocks))


def block_ticks(count, max_ticks=25):
    """``[k]`` tick positions for ``count`` blocks 0..count-1: every block up to ``max_ticks`` blocks, else every
    k-th block (the last block always included)."""
    step = max(1, -(-count // max_ticks))
    ticks = list(range(0, count, step))
    if ticks[-1] != count - 1:
        ticks.append(count - 1)
    return np.array(ticks)


def residual_units(model):
    """The model's residual units ``[(skip input, branch output, residual sum), ...]`` (tap names, forward order;
    ``vitcnn_tf.analysis.skip.residual_units``); ValueError for a model without any."""
    units = skip.residual_units(model)
    if not units:
        raise ValueError(f"model {getattr(model, 'name', model)!r}: no residual units; expected a vitcnn_tf ViT, "
                         "ResNetV2 or Mixer")
    return units


def block_output_taps(model):
    """The model's residual sums (the outputs of its residual units: ViT ``+sa`` / ``+mlp``, ResNet ``+res``, Mixer
    ``+token_mixing`` / ``+channel_mixing``), in forward order."""
    return [unit[-1] for unit in residual_units(model)]


def residual_stream_taps(model):
    """Every tap of the model's residual units (skip inputs, branch outputs and residual sums: the block sublayers
    and the residual stream), in forward order. For a ViT: ``embedding``, then per block ``sa``, ``+sa``, ``mlp``,
    ``+mlp`` (1 + 4 L taps); for a ResNet: per unit ``skip``, ``branch``, ``+res``."""
    names = set(name for unit in residual_units(model) for name in unit)
    return [name for name in representations.layer_names(model) if name in names]


def block_output_indices(model, names):
    """Indices into ``names`` of the model's residual sums (:func:`block_output_taps`), in forward order."""
    return [names.index(name) for name in block_output_taps(model) if name in names]


def residual_stream_layers(model):
    """The representations between residual units, in forward order: ViT ``embedding`` and every
    ``blockNN/+sa``, ``blockNN/+mlp``; Mixer ``stem`` and every ``+token_mixing``, ``+channel_mixing``;
    ResNetV2 the root output and every unit output ``blockB/unitUU/+res``."""
    found = model_family(model)
    if found == "vit":
        return representations.select_layers(model, r"embedding|block\d+/\+(sa|mlp)")
    if found == "mixer":
        return representations.select_layers(model, r"stem|block\d+/\+(token|channel)_mixing")
    names = representations.layer_names(model)
    root = "root/pool" if "root/pool" in names else "root/conv"
    return [root] + representations.select_layers(model, r"block\d+/unit\d+/\+res")


def block_output_layers(model):
    """The output of every block: ViT ``blockNN/+mlp``, Mixer ``blockNN/+channel_mixing``, ResNetV2 every unit's
    ``blockB/unitUU/+res``."""
    pattern = {"vit": r"block\d+/\+mlp", "mixer": r"block\d+/\+channel_mixing",
               "resnet": r"block\d+/unit\d+/\+res"}[model_family(model)]
    return representations.select_layers(model, pattern)


def model_slices(joint_names):
    """``{label: slice of its rows}`` in a joint matrix over joint tap names ``"<label>:<tap>"`` (grouped by label)."""
    slices = {}
    for index, name in enumerate(joint_names):
        label, _ = representations.split_tap_name(name)
        start = slices[label].start if label in slices else index
        slices[label] = slice(start, index + 1)
    return slices
