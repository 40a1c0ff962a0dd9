"""Model specs: one string names a model, whatever its source.

A spec is one of:

* a zoo recipe (``vit``, ``vit_gap``, ``resnet``, ``mixer``, ... see ``vitcnn_tf.zoo.RECIPES``): the trained
  weights shipped with the package, or, with a zoo folder, trained there on first use (kind ``"zoo"``);
* a saved Keras model, ``path/to/model.keras`` (kind ``"keras"``);
* a preset with a checkpoint file, ``PRESET=path/to/file.npz`` (``ViT-B/16=ckpt/ViT-B_16.npz``), with config
  overrides as ``PRESET:key=value,...=file.npz`` (``ViT-B/16:representation_size=768,num_classes=21843=ckpt/
  ViT-B_16.npz``); a timm ``.safetensors`` file is accepted in place of the ``.npz`` (kind ``"checkpoint"``);
* a bare preset with optional overrides, ``PRESET[:key=value,...]``: a randomly initialised model (kind
  ``"preset"``);
* ``init:<spec>`` for any spec above but a ``.keras`` file: the same architecture at initialisation, untrained (kind
  ``"init"``, label ``<label>@init``): a zoo recipe's model seeded with the recipe's seed, a checkpoint's or preset's
  seeded with 0, no file read. The control of a finding: the same statistic before training.

Override values are Python literals (``num_classes=5``, ``skip_blocks_removed=(1, 3)``, ``classifier='gap'``);
a value that is not a literal is kept as a string (``classifier=gap``).
"""

import ast
import dataclasses
import os
import re

from vitcnn_tf.atomic_io import sha256_file
from vitcnn_tf.models import registry

KINDS = ("zoo", "keras", "checkpoint", "preset", "init")
KERAS_SUFFIX = ".keras"
INIT_PREFIX = "init:"
INIT_LABEL_SUFFIX = "@init"
INIT_SEED = 0  # the initialisation seed of a checkpoint's or preset's init spec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    ``text``: the spec as given; ``kind``: one of :data:`KINDS`; ``preset``: the registry preset (checkpoint and
    preset kinds, and init kind of those) or None; ``overrides``: config fields to replace; ``path``: the file
    (keras and checkpoint kinds) or None; ``label``: a short file-name-safe label (the zoo name, the ``.keras``
    file's stem, or the preset with ``/`` replaced by ``-``; ``<label>@init`` for the init kind); ``inner``: the
    spec an init spec initialises (None for other kinds).
    """

    text: str
    kind: str
    preset: str | None
    overrides: dict
    path: str | None
    label: str
    inner: "ModelSpec | None" = None

    @property
    def name(self):
        """The zoo recipe name (zoo kind) or the preset name (of the inner spec for the init kind)."""
        if self.kind == "init":
            return self.inner.name
        return self.text if self.kind == "zoo" else self.preset


def parse_model_spec(spec):
    """The :class:`ModelSpec` of ``spec`` (a string, or a ModelSpec returned as is).

    ValueError for an empty spec, a malformed override, a name that is neither a zoo recipe nor a preset (the
    message lists both), or an init spec of a ``.keras`` file or of an init spec.
    """
    if isinstance(spec, ModelSpec):
        return spec
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"model spec: expected a non-empty string, got {spec!r}")
    if text.startswith(INIT_PREFIX):
        inner = parse_model_spec(text[len(INIT_PREFIX):])
        if inner.kind == "init":
            raise ValueError(f"model spec {text!r}: {INIT_PREFIX} applies once; {inner.text!r} is already an init spec")
        if inner.kind == "keras":
            raise ValueError(f"model spec {text!r}: no initialisation control for a .keras file: its architecture's "
                             "initialisers are unknown")
        return ModelSpec(text, "init", inner.preset, inner.overrides, None, inner.label + INIT_LABEL_SUFFIX, inner)
    head, separator, file_name = text.rpartition("=")
    if separator and file_name.endswith(registry.CHECKPOINT_SUFFIXES):
        preset, overrides = _preset_and_overrides(head, text)
        return ModelSpec(text, "checkpoint", preset, overrides, file_name, safe_label(preset))
    if text.endswith(KERAS_SUFFIX):
        return ModelSpec(text, "keras", None, {}, text, safe_label(os.path.basename(text)[: -len(KERAS_SUFFIX)]))
    from vitcnn_tf import zoo

    if text in zoo.RECIPES:
        return ModelSpec(text, "zoo", None, {}, None, safe_label(text))
    preset, overrides = _preset_and_overrides(text, text)
    return ModelSpec(text, "preset", preset, overrides, None, safe_label(preset))


def safe_label(name):
    """``name`` with every run of characters other than letters, digits, ``_``, ``.`` and ``-`` replaced by ``-``
    (``"ViT-B/16"`` -> ``"ViT-B-16"``); ``"model"`` if nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def load_model(spec, *, zoo_dir=None, data_dir=None, verbose=0):
    """The ``keras.Model`` named by ``spec`` (a string or :class:`ModelSpec`).

    ``zoo_dir``: None for the zoo shipped with the package (``vitcnn_tf.zoo.ShippedZooError`` for a recipe not
    shipped or not matching its record), or a zoo folder (recipes are trained there on first use, with ``data_dir``
    and Keras ``verbose``). A missing file raises ``FileNotFoundError`` naming the spec and the path; an unknown
    name ``ValueError`` listing the zoo recipes and the presets.
    """
    spec = parse_model_spec(spec)
    if spec.kind == "init":
        return _initial_model(spec.inner, data_dir)
    if spec.kind == "zoo":
        from vitcnn_tf import zoo

        return zoo.get_model(spec.text, zoo_dir, data_dir=data_dir, verbose=verbose)
    if spec.kind == "preset":
        return registry.get_model(spec.preset, **spec.overrides)
    _require_file(spec)
    if spec.kind == "checkpoint":
        return registry.get_model(spec.preset, spec.path, **spec.overrides)
    import keras  # the custom layers are registered by the import of vitcnn_tf.models above

    return keras.saving.load_model(spec.path)


def _initial_model(inner, data_dir):
    """The untrained model of the (zoo, checkpoint or preset) spec ``inner``; no weights file is read."""
    if inner.kind == "zoo":
        from vitcnn_tf import zoo

        return zoo.build_model(inner.text, data_dir=data_dir)
    import keras

    keras.utils.set_random_seed(INIT_SEED)
    return registry.get_model(inner.preset, **inner.overrides)


def init_spec(spec):
    """``"init:<spec>"``: the spec of ``spec``'s architecture at initialisation. ValueError for a ``.keras`` file,
    an init spec or an invalid spec."""
    text = parse_model_spec(spec).text
    return parse_model_spec(INIT_PREFIX + text).text


def seed_twin(spec, seed):
    """The spec of the model ``spec`` names trained with seed ``seed`` instead, or None when there is none.

    A seed-0 zoo recipe with seed twins (a key of ``vitcnn_tf.zoo.SEEDS_OF``): its twin of that seed if it is in
    the zoo, else None. Any other spec (zoo seed twins, files, presets): itself for seed 0, else None. An init spec:
    the init spec of its inner spec's twin.
    """
    from vitcnn_tf import zoo

    parsed = parse_model_spec(spec)
    if parsed.kind == "init":
        twin = seed_twin(parsed.inner, seed)
        return None if twin is None else init_spec(twin)
    if parsed.kind == "zoo" and parsed.text in zoo.SEEDS_OF:
        name = zoo.seed_recipe(zoo.RECIPES[parsed.text], seed).name
        return name if name in zoo.SEEDS_OF[parsed.text] else None
    return parsed.text if seed == 0 else None


def recipe_name(spec):
    """The zoo recipe behind ``spec`` (a zoo spec, or the init spec of one), else None."""
    parsed = parse_model_spec(spec)
    if parsed.kind == "init":
        parsed = parsed.inner
    return parsed.text if parsed.kind == "zoo" else None


def load_models(specs, *, pool=None, **kwargs):
    """``{label: keras.Model}`` for ``specs`` in order, through :func:`load_model` (``kwargs``), or through
    ``pool.load_model`` (a :class:`ModelPool`). A repeated label is told apart by the checkpoint's file name
    (``ViT-B-16``, ``ViT-B-16-B_16-i1k-300ep...``), else by a ``#k`` suffix (``vit``, ``vit#2``)."""
    load = load_model if pool is None else pool.load_model
    models = {}
    for spec in map(parse_model_spec, specs):
        label = spec.label
        if label in models and spec.kind == "checkpoint":
            label = f"{label}-{safe_label(os.path.splitext(os.path.basename(spec.path))[0])}"
        if label in models:
            label = f"{label}#{sum(existing.split('#')[0] == label for existing in models) + 1}"
        models[label] = load(spec, **kwargs)
    return models


class ModelPool:
    """Models kept from one run of an analysis to the next, so that what was compiled for a model object
    (extraction functions, gradients) runs again without being traced again.

    :meth:`load_model` gives the model of ``spec`` as :func:`load_model` does. When a kept model of the same
    architecture (the same config) is free, it is that model with ``spec``'s weights loaded into it: a zoo model's
    or checkpoint's file read into it, a preset's weights copied from a freshly built model, an initialisation's
    weights as its first build drew them (they are seeded, so the pool keeps them instead of building the model
    again). :meth:`release` frees every model handed out, once a run is done with them. A ``.keras`` file's model
    is never kept.
    """

    def __init__(self):
        self._free = {}  # architecture -> [kept model], in the order they were first handed out
        self._taken = []  # [(architecture, model)] handed out since the last release
        self._initial_weights = {}  # (init spec, data_dir) -> the weights of its build

    def load_model(self, spec, *, zoo_dir=None, data_dir=None, verbose=0):
        """The model of ``spec`` (arguments as :func:`load_model`), a kept one where its architecture allows."""
        spec = parse_model_spec(spec)
        architecture = _architecture(spec, data_dir)
        if architecture is None:
            return load_model(spec, zoo_dir=zoo_dir, data_dir=data_dir, verbose=verbose)
        free = self._free.get(architecture)
        if free:
            model = free.pop(0)
            if spec.kind == "init":
                model.set_weights(self._initial_weights_of(spec, data_dir))
            else:
                _load_weights_into(model, spec, zoo_dir=zoo_dir, data_dir=data_dir, verbose=verbose)
        else:
            model = load_model(spec, zoo_dir=zoo_dir, data_dir=data_dir, verbose=verbose)
            if spec.kind == "init":
                self._initial_weights.setdefault((spec.text, data_dir), model.get_weights())
        self._taken.append((architecture, model))
        return model

    def release(self):
        """Makes every model handed out since the last release free for the next :meth:`load_model`."""
        for architecture, model in self._taken:
            self._free.setdefault(architecture, []).append(model)
        self._taken = []

    def _initial_weights_of(self, spec, data_dir):
        key = (spec.text, data_dir)
        if key not in self._initial_weights:
            self._initial_weights[key] = load_model(spec, data_dir=data_dir).get_weights()
        return self._initial_weights[key]


def _architecture(spec, data_dir):
    """The ``repr`` of the config that builds the model of ``spec`` (equal configs, equal architectures); None for a
    ``.keras`` file."""
    if spec.kind == "init":
        spec = spec.inner
    if spec.kind == "keras":
        return None
    if spec.kind == "zoo":
        from vitcnn_tf import zoo

        return repr(zoo.model_config(spec.text, data_dir=data_dir))
    return repr(registry.model_config(spec.preset, **spec.overrides))


def _load_weights_into(model, spec, *, zoo_dir, data_dir, verbose):
    """Gives ``model`` (built from the config of ``spec``) the weights of ``spec``'s model."""
    if spec.kind == "zoo":
        from vitcnn_tf import zoo

        zoo.load_or_train(spec.text, zoo_dir, data_dir=data_dir, verbose=verbose, into=model)
    elif spec.kind == "checkpoint":
        _require_file(spec)
        registry.load_checkpoint(model, spec.path)
    else:  # a preset: the weights a fresh build draws
        model.set_weights(load_model(spec, zoo_dir=zoo_dir, data_dir=data_dir).get_weights())


def model_identity(spec, zoo_dir=None):
    """What identifies the weights of ``spec``, for records and caches (JSON-able dict).

    Every kind has ``kind`` and ``label``. A file (keras, checkpoint) adds its normalised absolute ``path`` and
    ``sha256``; a checkpoint or preset its ``preset`` and ``overrides``; a zoo recipe its ``recipe`` name, the
    recipe's ``recipe_fingerprint`` and the weights' ``weights_sha256`` (from the shipped zoo's record for
    ``zoo_dir=None``, raising ``vitcnn_tf.zoo.ShippedZooError`` as ``zoo.cached_record``; from the folder
    ``zoo_dir``, None when not trained there yet). ``spec`` is the spec rewritten with the absolute path, never as
    the option spelled it. An init spec adds ``of``: its inner spec's ``kind`` with the ``recipe`` and
    ``recipe_fingerprint`` (zoo) or the ``preset`` and ``overrides``, no file read (and no ``spec``: the path it
    names is neither read nor part of its identity).
    """
    spec = parse_model_spec(spec)
    identity = {"kind": spec.kind, "label": spec.label}
    if spec.kind == "init":
        inner = spec.inner
        if inner.kind == "zoo":
            from vitcnn_tf import zoo

            of = {"kind": "zoo", "recipe": inner.text, "recipe_fingerprint": zoo.get_recipe(inner.text).fingerprint()}
        else:
            of = {"kind": inner.kind, "preset": inner.preset,
                  "overrides": {key: _json_value(v) for key, v in inner.overrides.items()}}
        identity["of"] = of  # no file path: the control reads no file, so the spelling of one must not matter
        return identity
    if spec.kind == "zoo":
        from vitcnn_tf import zoo

        record = zoo.cached_record(spec.text, zoo_dir) or {}
        identity.update(spec=spec.text, recipe=spec.text, recipe_fingerprint=zoo.get_recipe(spec.text).fingerprint(),
                        weights_sha256=record.get("weights_sha256"))
        return identity
    if spec.kind in ("checkpoint", "preset"):
        identity.update(preset=spec.preset, overrides={key: _json_value(v) for key, v in spec.overrides.items()})
    if spec.path is None:
        identity["spec"] = spec.text
        return identity
    _require_file(spec)
    path = os.path.abspath(os.path.normpath(spec.path))
    identity.update(path=path, sha256=sha256_file(path))
    identity["spec"] = path if spec.kind == "keras" else f"{spec.text[: -len(spec.path)]}{path}"
    return identity


def _require_file(spec):
    if not os.path.isfile(spec.path):
        raise FileNotFoundError(f"model spec {spec.text!r}: no {spec.kind} file {spec.path!r} "
                                f"(absolute: {os.path.abspath(spec.path)})")


def _preset_and_overrides(text, spec_text):
    """``"PRESET[:key=value,...]"`` -> ``(preset, {key: value})``; the preset must be in the registry."""
    preset, _, override_text = text.partition(":")
    if preset not in registry.preset_names():
        from vitcnn_tf import zoo

        raise ValueError(f"model spec {spec_text!r}: {preset!r} is neither a zoo recipe ({', '.join(zoo.RECIPES)}) "
                         f"nor a model preset ({', '.join(registry.preset_names())}); other specs are "
                         f"PATH{KERAS_SUFFIX} and PRESET[:key=value,...]=CHECKPOINT")
    overrides = {}
    for item in _split_top_level(override_text):
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not key.isidentifier():
            raise ValueError(f"model spec {spec_text!r}: override {item!r} must be key=value")
        try:
            overrides[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key] = value.strip()
    return preset, overrides


def _split_top_level(text):
    """Splits ``text`` at the commas outside brackets: ``"a=(1, 2),b=3"`` -> ``["a=(1, 2)", "b=3"]``."""
    items, depth, current = [], 0, []
    for character in text:
        if character in "([{":
            depth += 1
        elif character in ")]}":
            depth -= 1
        if character == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(character)
    items.append("".join(current))
    return [item for item in items if item.strip()]


def _json_value(value):
    return list(value) if isinstance(value, tuple) else value
