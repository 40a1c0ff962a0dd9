"""Representations of Keras models: list them, extract them for a batch, stream a dataset of them into CKA.

A model's representations ("taps") are ``model.taps`` for the vitcnn_tf models (stable names such as
``block00/attn``, in forward order) and, for any other Keras functional or ``Sequential`` model, the outputs of
its layers named by layer name (a layer with several outputs gives ``name/0``, ``name/1``, ...; a layer called
more than once gives the output of its first call).

Layers are selected by ``layers=None`` (all taps), a list of names, or a string: a tap's exact name or else a
regular expression that must match whole names (``r"block\\d+/\\+mlp"``).
"""

import contextlib
import difflib
import re
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from vitcnn_tf.data.elements import element_images
from vitcnn_tf.metrics.precision import full_float32_precision

# model -> {tuple of tap names -> compiled extraction function}; entries go away with their model.
_EXTRACTORS = weakref.WeakKeyDictionary()
# first model -> {(keys, selections, name) -> ([weak references to the other models], joint model)}
_JOINT_MODELS = weakref.WeakKeyDictionary()


def layer_names(model):
    """Every tap name of ``model``, in forward order."""
    return list(_taps(model))


def extract(model, images, layers=None):
    """Tap values of ``model`` for one batch: ``images [n, H, W, C]`` -> {name -> np.ndarray [n, ...]}.

    ``layers`` selects the taps (see the module docstring); the result follows the order of ``layers`` for a
    list, forward order otherwise. The compiled extraction is cached per (model, selected taps).
    """
    names = select_layers(model, layers)
    images = _check_images(model, images, "extract")
    outputs = _extractor(model, names)(images)
    return {name: np.asarray(value) for name, value in zip(names, outputs)}


def tap_shapes(model, layers=None):
    """``{tap name: shape of one example}`` (the symbolic shape without the batch axis; None for a dynamic axis) of
    the taps ``layers`` selects, without running the model."""
    taps = _taps(model)
    return {name: tuple(taps[name].shape[1:]) for name in select_layers(model, layers)}


def select_layers(model, layers=None):
    """Tap names of ``model`` selected by ``layers`` (None, a list of names, a name or a regex string)."""
    available = _taps(model)
    if layers is None:
        return list(available)
    if isinstance(layers, str):
        if layers in available:
            return [layers]
        try:
            pattern = re.compile(layers)
        except re.error as error:
            raise ValueError(f"layers={layers!r} is neither a tap name of {model.name!r} nor a valid regular "
                             f"expression ({error})") from error
        selected = [name for name in available if pattern.fullmatch(name)]
        if not selected:
            raise ValueError(f"layers={layers!r} matches no tap of {model.name!r} (the regular expression must match "
                             f"whole names); taps are: {_preview(available)}")
        return selected
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers must be None, a string or a list of tap names, got {type(layers).__name__}")
    unknown = [name for name in layers if name not in available]
    if unknown:
        hints = "; ".join(f"{name!r}: close matches {difflib.get_close_matches(str(name), list(available), n=4)}"
                          for name in unknown)
        raise ValueError(f"unknown taps of {model.name!r}: {hints}")
    if not layers:
        raise ValueError("layers is an empty list; give at least one tap name (or None for all taps)")
    return list(dict.fromkeys(layers))


def tap_model(model, layers):
    """``keras.Model`` from the image input of ``model`` to its taps ``layers`` (a name: one output; a list or a
    regex: a list of outputs), for gradients through representations (receptive fields)."""
    taps = _taps(model)
    if isinstance(layers, str) and layers in taps:
        return keras.Model(_single_input(model), taps[layers])
    return keras.Model(_single_input(model), [taps[name] for name in select_layers(model, layers)])


def model_with_taps(inputs, taps, name=None):
    """A functional ``keras.Model`` from ``inputs`` to the ordered ``taps`` dict {name -> symbolic tensor}, exposing
    ``model.taps`` (so ``extract`` / ``accumulate_cka`` address the taps by those names)."""
    if not taps:
        raise ValueError("model_with_taps: taps is empty; expected {name: symbolic tensor}")
    model = keras.Model(inputs, list(taps.values()), name=name)
    model.taps = dict(taps)
    return model


def joint_tap_model(models, layers=None, name="joint"):
    """One model running several image models side by side on a shared input, with taps ``"<key>:<tap name>"``.

    ``models``: {key -> model} (every model has the same input shape; ``key`` must not contain ``":"``).
    ``layers``: None (all taps of every model) or {key -> selection} as in ``select_layers`` (a missing key selects
    all its taps). Feeding the result to ``accumulate_cka`` accumulates every within- and cross-model CKA pair in
    one pass, each tap's Gram matrix computed once per minibatch; ``split_tap_name`` undoes the naming.
    The same model objects, selections and name give the same joint model (so its compiled extraction is reused).
    """
    if not models:
        raise ValueError("joint_tap_model: models is empty; expected {key: model}")
    layers = {} if layers is None else dict(layers)
    first, *others = models.values()
    key = (tuple(models), repr(sorted(layers.items(), key=lambda item: str(item[0]))), name)
    cached = _JOINT_MODELS.get(first, {}).get(key)
    if cached is not None and all(ref() is model for ref, model in zip(cached[0], others)):
        return cached[1]
    joint = _build_joint_tap_model(models, layers, name)
    _JOINT_MODELS.setdefault(first, {})[key] = ([weakref.ref(model) for model in others], joint)
    return joint


def _build_joint_tap_model(models, layers, name):
    unknown = sorted(set(layers) - set(models))
    if unknown:
        raise ValueError(f"joint_tap_model: layers has keys {unknown} that are not in models ({sorted(models)})")
    shapes = {key: tuple(_single_input(model).shape[1:]) for key, model in models.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"joint_tap_model: the models must share one input shape, got {shapes}")
    inputs = keras.Input(next(iter(shapes.values())), name=f"{name}_images")
    taps = {}
    for key, model in models.items():
        if ":" in str(key):
            raise ValueError(f"joint_tap_model: model key {key!r} must not contain ':'")
        names = select_layers(model, layers.get(key))
        outputs = tap_model(model, names)(inputs)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        taps.update({f"{key}:{tap}": tensor for tap, tensor in zip(names, outputs)})
    return model_with_taps(inputs, taps, name=name)


def split_tap_name(joint_name):
    """``"<key>:<tap name>"`` (a ``joint_tap_model`` tap) -> ``(key, tap name)``."""
    key, separator, tap = str(joint_name).partition(":")
    if not separator:
        raise ValueError(f"split_tap_name: {joint_name!r} is not a joint tap name '<key>:<tap name>'")
    return key, tap


def accumulate_cka(model_x, dataset, layers_x=None, model_y=None, layers_y=None, metric=None, progress=True,
                   return_batch_terms=False, strategy=None):
    """Streams ``dataset`` through the models into a ``MinibatchCKA``; returns ``(metric, names_x, names_y)``.

    ``dataset`` yields batches of images ``[n, H, W, C]`` (``n >= 4``), or ``(images, labels, ...)`` tuples, or
    dicts with an ``"image"``/``"images"`` entry. Each batch is extracted by one compiled call and added to the
    metric's running HSIC sums, so no activations are kept beyond the current batch. The models' forward passes run
    with the process's TensorFloat-32 setting, the metric's update with TensorFloat-32 off
    (``vitcnn_tf.metrics.precision``).

    Within one model (``model_y`` and ``layers_y`` None) the metric compares the ``layers_x`` taps with each other
    (``MinibatchCKA(len(names_x))``, ``names_y == names_x``). Otherwise it compares ``layers_x`` of ``model_x`` with
    ``layers_y`` of ``model_y`` (default ``model_x``; one forward pass when it is the same model).
    ``metric.result()`` is the ``[len(names_x), len(names_y)]`` CKA matrix. Pass ``metric`` to keep accumulating
    into an existing metric of matching size.

    ``return_batch_terms=True`` adds a 4th element, each minibatch's own HSIC_1 terms (for bootstrap intervals
    over minibatches, ``vitcnn_tf.analysis.bootstrap.cka_bootstrap_interval``): a dict of float64 arrays
    ``cross [B, Lx, Ly]``, ``self_x [B, Lx]``, ``self_y [B, Ly]`` over the ``B`` batches of this call, read as the
    change of the metric's running sums in each update (so they sum to this call's share of the metric's state).

    ``strategy``: a ``tf.distribute.Strategy`` (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``,
    ``TPUStrategy``) to run extraction and accumulation on its ``R = num_replicas_in_sync`` replicas; ``dataset``
    must then be a ``tf.data.Dataset`` that every worker reads whole, in the same order. Each global batch of ``m``
    examples is cut into ``R`` consecutive shares of ``m // R`` examples, replica ``r`` taking share ``r``; each
    share counts as one minibatch and the metric's SUM-aggregated state adds them up, so the result equals a
    single-device run over the shares in order. The last ``m mod R`` examples of a batch, and a whole batch whose
    shares would have fewer than 4 examples (e.g. a short last batch), are left out, with one warning giving the
    count. A new metric is created in ``strategy.scope()``; a given one must have been. Batch terms are then per
    global batch.
    """
    from vitcnn_tf.metrics.cka import MinibatchCKA

    names_x = select_layers(model_x, layers_x)
    cross = model_y is not None or layers_y is not None
    model_y = model_x if model_y is None else model_y
    names_y = select_layers(model_y, layers_y) if cross else names_x
    num_layers_y = len(names_y) if cross else None
    if metric is None:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            metric = MinibatchCKA(len(names_x), num_layers_y)
    elif (metric.num_layers_x, metric.num_layers_y) != (len(names_x), num_layers_y):
        raise ValueError(f"accumulate_cka: metric has num_layers_x={metric.num_layers_x}, "
                         f"num_layers_y={metric.num_layers_y}; the selected layers need {len(names_x)}, "
                         f"{num_layers_y}")
    forward = _paired_extractor(model_x, names_x, model_y, names_y if cross else None)
    if strategy is None:
        update = _local_update(forward, metric)
    else:
        update, dataset = _distributed_update(strategy, forward, metric, model_x, dataset)
    cardinality = int(dataset.cardinality()) if isinstance(dataset, tf.data.Dataset) else -1
    progress_bar = keras.utils.Progbar(cardinality if cardinality >= 0 else None) if progress else None
    terms, seen, left_out = [], 0, 0
    for count, batch in enumerate(dataset, start=1):
        images = _check_images(model_x, element_images(batch, "accumulate_cka"), "accumulate_cka")
        batch_terms, used = update(images)
        seen, left_out = seen + int(images.shape[0]), left_out + int(images.shape[0]) - used
        if return_batch_terms and used:
            terms.append([np.asarray(term, dtype=np.float64) for term in batch_terms])
        if progress_bar is not None:
            progress_bar.update(count)
    if left_out:
        warnings.warn(f"accumulate_cka: left out {left_out} of {seen} examples: the {strategy.num_replicas_in_sync} "
                      f"replicas take equal shares of each global batch, of at least 4 examples",
                      RuntimeWarning, stacklevel=2)
    if not return_batch_terms:
        return metric, names_x, names_y
    if not terms:
        raise ValueError("accumulate_cka: the dataset yielded no batches, so there are no batch terms")
    cross, self_x, self_y = (np.stack(parts) for parts in zip(*terms))
    return metric, names_x, names_y, {"cross": cross, "self_x": self_x, "self_y": self_y}


def _local_update(forward, metric):
    """``update(images [n, ...]) -> (change of the metric's sums, n)``: ``forward`` then the metric update, in this
    process's default device, the update with TensorFloat-32 off.

    The update runs eagerly around the metric's compiled minibatch terms (traced and optimised once per input
    shapes for every metric), so a new metric over the same taps costs no new compilation."""

    def update(images):
        xs, ys = forward(images)
        with full_float32_precision():
            before = _hsic_sums(metric)
            metric.update_state(xs, ys)
            return [after - previous for after, previous in zip(_hsic_sums(metric), before)], int(images.shape[0])

    return update


def _distributed_update(strategy, forward, metric, model, dataset):
    """``(update, images-only dataset)``: ``update(global batch [m, ...])`` cuts the batch into ``R`` equal shares,
    runs ``forward`` and the metric update on every replica of ``strategy`` (the update with TensorFloat-32 off) and
    returns ``(change of the metric's sums, examples used)``; a batch with shares under 4 examples is skipped
    (``(None, 0)``). Every worker makes the same calls, so the collective operations match."""
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"accumulate_cka: with a strategy, dataset must be a tf.data.Dataset, got "
                        f"{type(dataset).__name__}")
    images_only = dataset.map(lambda *batch: element_images(batch[0] if len(batch) == 1 else batch, "accumulate_cka"))
    expected = tuple(_single_input(model).shape[1:])
    found = tuple(images_only.element_spec.shape[1:])
    if len(found) != len(expected) or any(e is not None and f not in (None, e) for f, e in zip(found, expected)):
        raise ValueError(f"accumulate_cka: dataset images have shape [n, {', '.join(map(str, found))}], model "
                         f"{model.name!r} expects [n, {', '.join(map(str, expected))}]")
    replicas = strategy.num_replicas_in_sync

    def local_forward(images):
        xs, ys = forward(images)
        return xs, [] if ys is None else ys

    @tf.function(autograph=False)
    def replica_forward(images):
        return strategy.run(local_forward, args=(images,))

    @tf.function(autograph=False)
    def replica_add(xs, ys):
        strategy.run(lambda local_xs, local_ys: metric.update_state(list(local_xs), list(local_ys) or None),
                     args=(xs, ys))

    def update(images):
        share = int(images.shape[0]) // replicas
        if share < 4:
            return None, 0

        def replica_share(context):
            start = context.replica_id_in_sync_group * share
            return images[start:start + share]

        xs, ys = replica_forward(strategy.experimental_distribute_values_from_function(replica_share))
        before = [np.asarray(term) for term in _hsic_sums(metric)]
        with full_float32_precision():
            replica_add(xs, ys)
        return [np.asarray(after) - previous for after, previous in zip(_hsic_sums(metric), before)], share * replicas

    return update, images_only


def _hsic_sums(metric):
    """The running HSIC_1 sums of a ``MinibatchCKA``: ``[cross [Lx, Ly], self_x [Lx], self_y [Ly]]`` tensors."""
    self_y = metric.self_hsic_x if metric.within_model else metric.self_hsic_y
    return [tf.convert_to_tensor(variable) for variable in (metric.cross_hsic, metric.self_hsic_x, self_y)]


def _taps(model):
    """{tap name -> symbolic tensor} of ``model``: ``model.taps`` or its layers' outputs."""
    taps = getattr(model, "taps", None)
    if taps is not None:
        return dict(taps)
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
    try:
        model_inputs = model.inputs
    except (AttributeError, ValueError):
        model_inputs = None
    if not model_inputs:
        raise ValueError(f"model {model.name!r} has no symbolic inputs: representations need a functional or "
                         "Sequential model built on a keras.Input")
    taps = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        output = layer.output
        if isinstance(output, (list, tuple)):
            taps.update({f"{layer.name}/{index}": tensor for index, tensor in enumerate(output)})
        else:
            taps[layer.name] = output
    return taps


def _extractor(model, names):
    """Compiled ``images -> [tap values]`` for the taps ``names`` of ``model`` (cached)."""
    per_model = _EXTRACTORS.setdefault(model, {})
    key = tuple(names)
    if key not in per_model:
        submodel = tap_model(model, names)

        def forward(images):
            outputs = submodel(images, training=False)
            # Keras 3 returns a single output bare even when the model was built with a one-element list.
            return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

        per_model[key] = tf.function(forward, autograph=False)
    return per_model[key]


def _paired_extractor(model_x, names_x, model_y, names_y):
    """``images -> (xs, ys)``: taps ``names_x`` of ``model_x`` and ``names_y`` of ``model_y`` (None: ``ys=None``)."""
    if names_y is None:
        extract_x = _extractor(model_x, names_x)
        return lambda images: (extract_x(images), None)
    if model_y is model_x:
        union = list(dict.fromkeys(names_x + names_y))
        extract_all = _extractor(model_x, union)

        def forward(images):
            values = dict(zip(union, extract_all(images)))
            return [values[name] for name in names_x], [values[name] for name in names_y]

        return forward
    extract_x, extract_y = _extractor(model_x, names_x), _extractor(model_y, names_y)
    return lambda images: (extract_x(images), extract_y(images))


def _single_input(model):
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs; representations support "
                         "single-input (image) models")
    return model.inputs[0]


def _check_images(model, images, caller):
    """``images`` as a float tensor of the model's input shape (ValueError naming both shapes otherwise)."""
    expected = tuple(_single_input(model).shape)
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        raise ValueError(f"{caller}: images must be floating point (float32 NHWC in [-1, 1]), got {images.dtype}")
    shape = tuple(images.shape)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape[1:], expected[1:])):
        raise ValueError(f"{caller}: images must have shape [n, {', '.join(map(str, expected[1:]))}] for model "
                         f"{model.name!r}, got {list(shape)}")
    return images


def _preview(names, limit=12):
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
