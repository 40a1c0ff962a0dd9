"""The CPU-scale model zoo: named training recipes whose trained weights are cached under a results directory.

``get_model("vit")`` returns the trained model, training it on first use and loading it afterwards;
:func:`train_recipes` trains several at once in single-threaded worker processes (:mod:`vitcnn_tf.parallel`).
Models are built through the registry (``vitcnn_tf.models.get_model``) from the recipe's preset. Each recipe lives in
``<results_dir>/<recipe name>/``::

    model.npz      the weights in the release ``.npz`` format (``vitcnn_tf.models.save_npz``), written atomically
    record.json    the recipe and its fingerprint, model config, data, seed, epochs, history, train / test
                   accuracy, wall time, and the sha256 of ``model.npz`` (written last)

A cache entry is used only if the record parses, its ``recipe_fingerprint`` equals the recipe's current
fingerprint (a hash of every recipe field and of the data generator version) and the weights file's sha256
matches; otherwise (missing, truncated or corrupted file, changed recipe) the recipe is retrained.

Recipes (:data:`RECIPES`), all on the embedded ``shapes10`` set: ``vit`` (CLS token), ``vit_gap`` (global
average pooling), ``vit_noskip_early`` / ``_mid`` / ``_late`` (both skip connections of block 1 / 3 / 5
removed, Section 6), ``resnet``, ``mixer``, ``vit_data{3,10,30}`` / ``resnet_data{3,10,30}``: the same
recipes on nested stratified 3 / 10 / 30 % subsets of the training split (Section 8; 100 % is the plain
recipe), and ``vit_seed1`` / ``resnet_seed1``: the plain recipes with seed 1, for intervals over seeds. Subset
recipes train ``round(epochs / sqrt(fraction))`` epochs: more passes over less data, so that small subsets are
not starved of optimisation steps (``sqrt(fraction)`` of the full run's steps and cost).
"""

import dataclasses
import hashlib
import json
import logging
import os

from vitcnn_tf import data as data_lib
from vitcnn_tf import atomic_io, parallel, training
from vitcnn_tf.data import shapes
from vitcnn_tf.models import registry
from vitcnn_tf.training import TrainConfig

ZOO_FORMAT = 2  # 2: training drops the last partial batch of each epoch
DEFAULT_RESULTS_DIR = os.path.join("results", "zoo")
WEIGHTS_FORMAT = "npz"
TRAIN_EVAL_EXAMPLES = 1000

_LOG = logging.getLogger(__name__)

# The model families of the registry: a recipe's ``architecture`` is the family of its ``preset``.
ARCHITECTURES = tuple(family.name for family in registry.FAMILIES)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained zoo model.

    ``architecture`` is the registry family of ``preset`` (``"vit"``, ``"resnet"``, ``"mixer"``);
    ``model_overrides`` are passed to ``vitcnn_tf.models.get_model(preset, image_size=..., num_classes=...,
    **overrides)`` (``num_classes`` comes from the dataset). Data fields are those of
    :func:`vitcnn_tf.data.load_dataset`.
    """

    name: str
    architecture: str
    preset: str
    model_overrides: dict = dataclasses.field(default_factory=dict)
    training: TrainConfig = TrainConfig()
    dataset: str = data_lib.DEFAULT_DATASET
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = 32
    batch_size: int = 128
    fraction: float | None = None
    num_examples: int | None = None
    subset_seed: int = 0
    augment: str | None = None
    seed: int = 0
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or os.sep in self.name or self.name.startswith("."):
            raise ValueError(f"Recipe.name must be a plain, non-empty folder name, got {self.name!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Recipe {self.name!r}: architecture must be one of {sorted(ARCHITECTURES)}, "
                             f"got {self.architecture!r}")
        family = registry.family_of_preset(self.preset).name
        if family != self.architecture:
            raise ValueError(f"Recipe {self.name!r}: preset {self.preset!r} is a {family!r} model, not "
                             f"architecture={self.architecture!r}")
        if self.augment not in data_lib.AUGMENTATIONS:
            raise ValueError(f"Recipe {self.name!r}: augment must be one of {data_lib.AUGMENTATIONS}, "
                             f"got {self.augment!r}")

    def to_dict(self):
        """The recipe as JSON-able data (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self):
        """sha256 of every field except ``description``, plus the zoo format and the data generator version."""
        fields = self.to_dict()
        fields.pop("description")
        fields["zoo_format"] = ZOO_FORMAT
        if self.dataset == "shapes10":
            fields["shapes10_generator"] = shapes.GENERATOR_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A zoo model with its training record; ``trained`` tells whether this call trained it."""

    model: object
    record: dict
    trained: bool


# ---------------------------------------------------------------------------------------------------------
# The recipes.

_VIT = Recipe(
    name="vit", architecture="vit", preset="ViT-CPU/4",
    training=TrainConfig(epochs=3, learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.1),
    batch_size=64, description="ViT-CPU/4, CLS-token classifier",
)
_RESNET = Recipe(
    name="resnet", architecture="resnet", preset="ResNetV2-CPU",
    training=TrainConfig(epochs=1, learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.1),
    batch_size=64, description="BiT-style ResNetV2-CPU",
)
_MIXER = Recipe(
    name="mixer", architecture="mixer", preset="Mixer-CPU/4",
    training=TrainConfig(epochs=3, learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.1),
    batch_size=64, description="MLP-Mixer-CPU/4",
)
NOSKIP_BLOCKS = {"early": 1, "mid": 3, "late": 5}
DATA_FRACTIONS = (0.03, 0.1, 0.3)
EXTRA_SEEDS = (1,)


def seed_recipe(base, seed):
    """``base`` with another seed (initialisation, data order), named ``<base>_seed<seed>``: for intervals over
    seeds."""
    return dataclasses.replace(base, name=f"{base.name}_seed{seed}", seed=seed,
                               description=f"{base.description}, seed {seed}")


def subset_recipe(base, fraction):
    """``base`` trained on a stratified ``fraction`` of its training split, for ``round(epochs / sqrt(fraction))``
    epochs; named ``<base>_data<percent>``."""
    epochs = max(1, round(base.training.epochs / fraction ** 0.5))
    percent = f"{100 * fraction:g}"
    return dataclasses.replace(
        base, name=f"{base.name}_data{percent}", fraction=fraction,
        training=dataclasses.replace(base.training, epochs=epochs),
        description=f"{base.description}, {percent}% of the training data",
    )


def _build_recipes():
    recipes = [
        _VIT,
        _RESNET,
        dataclasses.replace(_VIT, name="vit_gap", model_overrides={"classifier": "gap"},
                            description="ViT-CPU/4, global-average-pooling classifier"),
    ]
    for where, block in NOSKIP_BLOCKS.items():
        recipes.append(dataclasses.replace(
            _VIT, name=f"vit_noskip_{where}", model_overrides={"skip_blocks_removed": (block,)},
            description=f"ViT-CPU/4 without the two skip connections of block {block} ({where})"))
    recipes.append(_MIXER)
    recipes += [subset_recipe(base, fraction) for base in (_VIT, _RESNET) for fraction in DATA_FRACTIONS]
    recipes += [seed_recipe(base, seed) for base in (_VIT, _RESNET) for seed in EXTRA_SEEDS]
    return {recipe.name: recipe for recipe in recipes}


RECIPES = _build_recipes()


# ---------------------------------------------------------------------------------------------------------


def get_recipe(recipe):
    """A :class:`Recipe` from a name of :data:`RECIPES` (or a recipe, returned as is)."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown zoo recipe {recipe!r}; known: {', '.join(RECIPES)}")
    return RECIPES[recipe]


def model_config(recipe, num_classes=None, data_dir=None):
    """The model config dataclass of ``recipe``: its preset with ``image_size``, the dataset's ``num_classes``
    and the recipe's overrides."""
    recipe = get_recipe(recipe)
    return registry.model_config(recipe.preset, **_model_overrides(recipe, num_classes, data_dir))


def build_model(recipe, num_classes=None, data_dir=None):
    """A freshly initialised model of ``recipe`` (initialisation seeded with ``recipe.seed``)."""
    import keras

    recipe = get_recipe(recipe)
    overrides = _model_overrides(recipe, num_classes, data_dir)
    keras.utils.set_random_seed(recipe.seed)
    return registry.get_model(recipe.preset, **overrides)


def _model_overrides(recipe, num_classes, data_dir):
    """The config overrides of ``recipe``'s preset: ``image_size``, the dataset's ``num_classes`` and the
    recipe's ``model_overrides``."""
    if num_classes is None:
        num_classes = data_lib.dataset_info(recipe.dataset, data_dir=data_dir).num_classes
    return {"image_size": recipe.image_size, "num_classes": num_classes, **recipe.model_overrides}


def recipe_dir(recipe, results_dir=DEFAULT_RESULTS_DIR):
    """The cache folder of ``recipe``: ``<results_dir>/<recipe name>``."""
    return os.path.join(os.fspath(results_dir), get_recipe(recipe).name)


def cached_record(recipe, results_dir=DEFAULT_RESULTS_DIR):
    """The record of a complete, valid cache entry for ``recipe``, or ``None`` (with the reason logged)."""
    recipe = get_recipe(recipe)
    folder = recipe_dir(recipe, results_dir)
    record_path = os.path.join(folder, training.RECORD_FILE)
    try:
        with open(record_path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        _LOG.warning("zoo: %s: unreadable record %s (%s); retraining", recipe.name, record_path, error)
        return None
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict) \
            or "num_classes" not in record["data"]:
        _LOG.warning("zoo: %s: %s is not a zoo record; retraining", recipe.name, record_path)
        return None
    if record.get("recipe_fingerprint") != recipe.fingerprint():
        _LOG.warning("zoo: %s: the recipe changed since %s was written; retraining", recipe.name, record_path)
        return None
    weights_path = os.path.join(folder, str(record.get("weights_file")))
    try:
        digest = atomic_io.sha256_file(weights_path)
    except OSError as error:
        _LOG.warning("zoo: %s: weights %s unreadable (%s); retraining", recipe.name, weights_path, error)
        return None
    if digest != record.get("weights_sha256"):
        _LOG.warning("zoo: %s: weights %s do not match the record's sha256 (truncated or corrupted); retraining",
                     recipe.name, weights_path)
        return None
    return record


def load_or_train(recipe, results_dir=DEFAULT_RESULTS_DIR, *, retrain=False, data_dir=None, cache_dir=None,
                  verbose="auto"):
    """The trained model of ``recipe`` (a name of :data:`RECIPES` or a :class:`Recipe`) as a :class:`ZooEntry`:
    loaded from ``results_dir`` when a valid cache entry exists (and ``retrain`` is false), else trained and
    cached. ``data_dir`` / ``cache_dir`` are passed to :func:`vitcnn_tf.data.load_dataset`."""
    recipe = get_recipe(recipe)
    folder = recipe_dir(recipe, results_dir)
    record = None if retrain else cached_record(recipe, results_dir)
    if record is not None:
        model = build_model(recipe, num_classes=record["data"]["num_classes"])
        try:
            training.load_weights(model, os.path.join(folder, record["weights_file"]), WEIGHTS_FORMAT)
        except (OSError, ValueError) as error:
            _LOG.warning("zoo: %s: cannot load %s (%s); retraining", recipe.name, folder, error)
        else:
            _LOG.info("zoo: %s: loaded from %s", recipe.name, folder)
            return ZooEntry(model, record, trained=False)
    return _train(recipe, folder, data_dir, cache_dir, verbose)


def get_model(recipe, results_dir=DEFAULT_RESULTS_DIR, *, retrain=False, data_dir=None, cache_dir=None,
              verbose="auto"):
    """The trained ``keras.Model`` of ``recipe``; see :func:`load_or_train`."""
    return load_or_train(recipe, results_dir, retrain=retrain, data_dir=data_dir, cache_dir=cache_dir,
                         verbose=verbose).model


# Single-threaded training seconds per example on a 2-core AMD EPYC (AVX2, oneDNN) and the fixed
# cost of a run (graph tracing, evaluations): scheduling estimates for train_recipes, longest first.
SECONDS_PER_EXAMPLE = {"vit": 0.0029, "mixer": 0.0025, "resnet": 0.0066}
FIXED_SECONDS = 20.0


def estimated_seconds(recipe, data_dir=None, cache_dir=None):
    """A rough single-threaded training time of ``recipe`` (see ``SECONDS_PER_EXAMPLE``), for scheduling."""
    recipe = get_recipe(recipe)
    examples = data_lib.split_size(recipe.dataset, recipe.train_split, fraction=recipe.fraction,
                                   num_examples=recipe.num_examples, subset_seed=recipe.subset_seed,
                                   data_dir=data_dir, cache_dir=cache_dir)
    return FIXED_SECONDS + SECONDS_PER_EXAMPLE[recipe.architecture] * examples * recipe.training.epochs


def training_task(recipe, results_dir=DEFAULT_RESULTS_DIR, *, data_dir=None, cache_dir=None, verbose=0, name=None):
    """A :class:`vitcnn_tf.parallel.Task` (named ``name`` or the recipe's name) that trains ``recipe`` into its
    cache folder and returns the record; its cost is :func:`estimated_seconds`."""
    recipe = get_recipe(recipe)
    return parallel.Task(name or recipe.name, _train_recipe, (recipe, os.fspath(results_dir), data_dir, cache_dir),
                         {"verbose": verbose}, cost=estimated_seconds(recipe, data_dir, cache_dir))


def train_recipes(recipes, results_dir=DEFAULT_RESULTS_DIR, *, num_workers=None, retrain=False, data_dir=None,
                  cache_dir=None, on_done=None):
    """Makes sure every recipe of ``recipes`` (names or :class:`Recipe` s) has a valid cache entry, training the
    missing ones in ``num_workers`` single-threaded worker processes (default: one per CPU; 1 trains here, with
    Keras progress bars), the longest first. Returns ``{name: (record, trained)}`` in the order given.
    ``on_done(name, record, trained)`` is called as each recipe is ready (cached ones first)."""
    recipes = list({recipe.name: recipe for recipe in map(get_recipe, recipes)}.values())
    if num_workers is None:
        num_workers = parallel.default_num_workers()
    outcome, tasks = {}, []
    for recipe in recipes:
        record = None if retrain else cached_record(recipe, results_dir)
        if record is not None:
            outcome[recipe.name] = (record, False)
            if on_done:
                on_done(recipe.name, record, False)
        else:
            tasks.append(training_task(recipe, results_dir, data_dir=data_dir, cache_dir=cache_dir,
                                       verbose="auto" if num_workers == 1 else 0))

    def finished(task, record):
        outcome[task.name] = (record, True)
        if on_done:
            on_done(task.name, record, True)

    parallel.run_tasks(tasks, num_workers=num_workers, on_done=finished)
    return {recipe.name: outcome[recipe.name] for recipe in recipes}


def _train_recipe(recipe, results_dir, data_dir, cache_dir, verbose):
    """Trains ``recipe`` into its cache folder and returns the record (the function of :func:`training_task`)."""
    return _train(recipe, recipe_dir(recipe, results_dir), data_dir, cache_dir, verbose).record


def _train(recipe, folder, data_dir, cache_dir, verbose):
    info = data_lib.dataset_info(recipe.dataset, data_dir=data_dir, cache_dir=cache_dir)
    common = dict(image_size=recipe.image_size, data_dir=data_dir, cache_dir=cache_dir)
    subset = dict(fraction=recipe.fraction, num_examples=recipe.num_examples, subset_seed=recipe.subset_seed)
    train_examples = data_lib.split_size(recipe.dataset, recipe.train_split, **subset, data_dir=data_dir,
                                         cache_dir=cache_dir)
    # Full batches only (the order is reshuffled every epoch, so every example is still seen): a last, smaller
    # batch would make Keras trace the training step a second time.
    train_data = data_lib.load_dataset(recipe.dataset, recipe.train_split, batch_size=recipe.batch_size,
                                       seed=recipe.seed, shuffle=True, augment=recipe.augment, **subset, **common,
                                       drop_remainder=train_examples >= recipe.batch_size)
    # The train accuracy is measured on the first TRAIN_EVAL_EXAMPLES of the subset order: a subset of the
    # training subset (all subsets are prefixes of one order), cheaper than the whole training set.
    train_eval_data = data_lib.load_dataset(
        recipe.dataset, recipe.train_split, batch_size=512, shuffle=False, subset_seed=recipe.subset_seed,
        num_examples=min(TRAIN_EVAL_EXAMPLES, train_examples), **common)
    test_data = data_lib.load_dataset(recipe.dataset, recipe.test_split, batch_size=512, shuffle=False, **common)
    model = build_model(recipe, num_classes=info.num_classes)
    _LOG.info("zoo: %s: training (%s) into %s", recipe.name, recipe.description or recipe.architecture, folder)
    data_record = {
        "dataset": recipe.dataset, "train_split": recipe.train_split, "test_split": recipe.test_split,
        "num_classes": info.num_classes, "image_size": recipe.image_size, "batch_size": recipe.batch_size,
        "fraction": recipe.fraction, "num_examples": recipe.num_examples, "subset_seed": recipe.subset_seed,
        "augment": recipe.augment,
        "train_examples": train_examples,
        "train_accuracy_examples": min(TRAIN_EVAL_EXAMPLES, train_examples),
        "test_examples": data_lib.split_size(recipe.dataset, recipe.test_split, data_dir=data_dir,
                                             cache_dir=cache_dir),
    }
    record = training.fit(
        model, train_data, test_data, recipe.training, seed=recipe.seed, output_dir=folder,
        train_eval_data=train_eval_data, weights_format=WEIGHTS_FORMAT, verbose=verbose,
        record_extra={
            "recipe": recipe.to_dict(),
            "recipe_fingerprint": recipe.fingerprint(),
            "model_config": json.loads(json.dumps(dataclasses.asdict(model.config))),
            "data": data_record,
        },
    )
    return ZooEntry(model, record, trained=True)
