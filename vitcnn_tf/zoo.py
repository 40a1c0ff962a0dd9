"""The CPU-scale model zoo: named training recipes, their trained weights shipped with the package, and a cache.

``get_model("vit")`` returns the trained model shipped with the package (:data:`SHIPPED_DIR`), never training it;
``get_model("vit", results_dir)`` trains it into the folder ``results_dir`` on first use and loads it afterwards;
:func:`train_recipes` trains several at once in single-threaded worker processes (:mod:`vitcnn_tf.parallel`) and
:func:`ship` copies trained entries into the package. Models are built through the registry
(``vitcnn_tf.models.get_model``) from the recipe's preset. Each recipe lives in ``<folder>/<recipe name>/``::

    model.npz      the weights in the release ``.npz`` format (``vitcnn_tf.models.save_npz``), written atomically
    record.json    the recipe and its fingerprint, model config, data, seed, epochs, history, train / test
                   accuracy, wall time, and the sha256 of ``model.npz`` (written last)

An entry is used only if the record parses, its ``recipe_fingerprint`` equals the recipe's current fingerprint (a
hash of every recipe field and of the data generator version) and the weights file's sha256 matches. In a results
folder a bad entry (missing, truncated or corrupted file, changed recipe) is retrained; in the shipped zoo it is a
:class:`ShippedZooError` naming the file, never a silent retrain.

Recipes (:data:`RECIPES`), all on the embedded ``shapes10`` set: ``vit`` (CLS token), ``vit_gap`` (global
average pooling), ``resnet``, ``mixer``, each with seeds 0, 1, 2 (``vit``, ``vit_seed1``, ``vit_seed2``, ...);
``vit_noskip_early`` / ``_mid`` / ``_late`` (both skip connections of block 1 / 3 / 5 removed, Section 6) and
``vit_data{3,10,30}`` (``vit`` on nested stratified 3 / 10 / 30 % subsets of the training split, Section 8), each
with seeds 0 and 1. :data:`SEEDS_OF` lists the seed twins of every seed-0 recipe. Subset recipes train
``round(epochs / sqrt(fraction))`` epochs with their early-stopping patience scaled alike: more passes over less
data, so that small subsets are not starved of optimisation steps.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil

from vitcnn_tf import data as data_lib
from vitcnn_tf import atomic_io, parallel, training
from vitcnn_tf.data import shapes
from vitcnn_tf.models import registry
from vitcnn_tf.training import TrainConfig

ZOO_FORMAT = 3  # 2: training drops the last partial batch of each epoch; 3: a validation split, early stopping
# The trained zoo shipped with the package: ``<SHIPPED_DIR>/<recipe>/{model.npz, record.json}``, made by
# ``python -m experiments.train --all --results-dir DIR --ship`` (:func:`ship`).
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo_weights")
DEFAULT_RESULTS_DIR = None  # a zoo folder of None is the shipped zoo
DEFAULT_TRAIN_DIR = os.path.join("results", "zoo")  # where the command lines train the zoo from its recipes
WEIGHTS_FORMAT = "npz"
TRAIN_EVAL_EXAMPLES = 1000

_LOG = logging.getLogger(__name__)


class ShippedZooError(ValueError):
    """A recipe of the shipped zoo is absent, or its files do not match its record or the recipe; names the file."""

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
    validation_split: str | None = None
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

# Every recipe trains on the 30,000 generated ``train_large`` images with random translations and flips, for at most
# ``epochs`` epochs, and stops early once the accuracy on the 2,000 ``validation`` images has not improved by more
# than 0.2 points for 2 epochs (keeping the best epoch). The budget of the whole zoo is in docs/zoo.md.
_SCHEDULE = dict(learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.05, early_stopping_patience=2,
                 early_stopping_min_delta=0.002)
_DATA = dict(train_split="train_large", validation_split="validation", augment="translate_flip", batch_size=64)
_VIT = Recipe(name="vit", architecture="vit", preset="ViT-CPU/4", training=TrainConfig(epochs=4, **_SCHEDULE),
              description="ViT-CPU/4, CLS-token classifier", **_DATA)
_RESNET = Recipe(name="resnet", architecture="resnet", preset="ResNetV2-CPU",
                 training=TrainConfig(epochs=2, **_SCHEDULE), description="BiT-style ResNetV2-CPU", **_DATA)
_MIXER = Recipe(name="mixer", architecture="mixer", preset="Mixer-CPU/4", training=TrainConfig(epochs=4, **_SCHEDULE),
                description="MLP-Mixer-CPU/4", **_DATA)
NOSKIP_BLOCKS = {"early": 1, "mid": 3, "late": 5}
DATA_FRACTIONS = (0.03, 0.1, 0.3)
# Seeds besides 0: three seeds of every model a Section 4-7 finding compares, two of the no-skip and data-fraction
# models (the training budget).
MAIN_SEEDS = (0, 1, 2)
SECONDARY_SEEDS = (0, 1)


def seed_recipe(base, seed):
    """``base`` with another seed (initialisation, data order), named ``<base>_seed<seed>`` (``base`` itself for
    seed 0): for intervals over seeds."""
    if seed == base.seed:
        return base
    return dataclasses.replace(base, name=f"{base.name}_seed{seed}", seed=seed,
                               description=f"{base.description}, seed {seed}")


def subset_recipe(base, fraction):
    """``base`` trained on a stratified ``fraction`` of its training split, for ``round(epochs / sqrt(fraction))``
    epochs, with its early-stopping patience scaled alike (so that it waits as many examples as the full recipe);
    named ``<base>_data<percent>``."""
    scale = fraction ** -0.5
    epochs = max(1, round(base.training.epochs * scale))
    patience = base.training.early_stopping_patience
    percent = f"{100 * fraction:g}"
    return dataclasses.replace(
        base, name=f"{base.name}_data{percent}", fraction=fraction,
        training=dataclasses.replace(base.training, epochs=epochs,
                                     early_stopping_patience=None if patience is None else round(patience * scale)),
        description=f"{base.description}, {percent}% of the training data",
    )


def _base_recipes():
    """``(recipe, seeds)`` of every seed-0 recipe."""
    main = [
        _VIT,
        _RESNET,
        dataclasses.replace(_VIT, name="vit_gap", model_overrides={"classifier": "gap"},
                            description="ViT-CPU/4, global-average-pooling classifier"),
        _MIXER,
    ]
    secondary = [dataclasses.replace(
        _VIT, name=f"vit_noskip_{where}", model_overrides={"skip_blocks_removed": (block,)},
        description=f"ViT-CPU/4 without the two skip connections of block {block} ({where})")
        for where, block in NOSKIP_BLOCKS.items()]
    secondary += [subset_recipe(_VIT, fraction) for fraction in DATA_FRACTIONS]
    return [(recipe, MAIN_SEEDS) for recipe in main] + [(recipe, SECONDARY_SEEDS) for recipe in secondary]


def _build_recipes():
    recipes = [seed_recipe(base, seed) for base, seeds in _base_recipes() for seed in seeds]
    return {recipe.name: recipe for recipe in recipes}


RECIPES = _build_recipes()
# {seed-0 recipe name: [its recipes, seed 0 first]}
SEEDS_OF = {base.name: [seed_recipe(base, seed).name for seed in seeds] for base, seeds in _base_recipes()}


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
    """The folder of ``recipe``: ``<results_dir>/<recipe name>``, or ``<SHIPPED_DIR>/<recipe name>`` for None."""
    folder = SHIPPED_DIR if results_dir is None else os.fspath(results_dir)
    return os.path.join(folder, get_recipe(recipe).name)


def cached_record(recipe, results_dir=DEFAULT_RESULTS_DIR):
    """The record of the valid entry of ``recipe`` in ``results_dir``.

    A folder: the record, or None (the reason logged) when the entry is missing or invalid. None (the shipped zoo):
    the record; :class:`ShippedZooError` naming the file when the recipe is not shipped, its record is unreadable
    or from another recipe, or its weights are missing or do not match the record's sha256.
    """
    recipe = get_recipe(recipe)
    record, problem = _check_entry(recipe, recipe_dir(recipe, results_dir))
    if results_dir is None and record is None:
        if problem is None:
            record_path = os.path.join(recipe_dir(recipe, None), training.RECORD_FILE)
            raise ShippedZooError(f"zoo recipe {recipe.name!r} is not in the shipped zoo ({record_path} not found); "
                                  "pass --zoo-dir DIR (results_dir=DIR) to train it from its recipe")
        raise ShippedZooError(f"shipped zoo: {problem}; pass --zoo-dir DIR (results_dir=DIR) to train "
                              f"{recipe.name!r} from its recipe instead")
    if problem:
        _LOG.warning("zoo: %s: %s; retraining", recipe.name, problem)
    return record


def _check_entry(recipe, folder):
    """``(record, None)`` for a valid entry of ``recipe`` in ``folder``; ``(None, None)`` without a record file;
    ``(None, why)`` for an invalid one."""
    record_path = os.path.join(folder, training.RECORD_FILE)
    try:
        with open(record_path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"unreadable record {record_path} ({error})"
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict) \
            or "num_classes" not in record["data"] or not isinstance(record.get("weights_file"), str):
        return None, f"{record_path} is not a zoo record"
    if record.get("recipe_fingerprint") != recipe.fingerprint():
        return None, (f"{record_path}: its weights were trained from another recipe than the code's {recipe.name!r} "
                      f"(recipe_fingerprint {record.get('recipe_fingerprint')}, the code's {recipe.fingerprint()})")
    weights_path = os.path.join(folder, record["weights_file"])
    try:
        digest = atomic_io.sha256_file(weights_path)
    except FileNotFoundError:
        return None, f"weights {weights_path} missing (named by {record_path})"
    except OSError as error:
        return None, f"weights {weights_path} unreadable ({error.strerror or error}), named by {record_path}"
    if digest != record.get("weights_sha256"):
        return None, (f"weights {weights_path} do not match their record {record_path} (truncated or corrupted): "
                      f"sha256 {digest}, recorded {record.get('weights_sha256')}")
    return record, None


def load_or_train(recipe, results_dir=DEFAULT_RESULTS_DIR, *, retrain=False, data_dir=None, cache_dir=None,
                  verbose="auto", into=None):
    """The trained model of ``recipe`` (a name of :data:`RECIPES` or a :class:`Recipe`) as a :class:`ZooEntry`.

    ``results_dir`` a folder: loaded from its valid entry (unless ``retrain``), else trained and cached there.
    None: the shipped weights, never trained (:class:`ShippedZooError` as :func:`cached_record`; ValueError for
    ``retrain=True``). ``data_dir`` / ``cache_dir`` are passed to :func:`vitcnn_tf.data.load_dataset`. ``into``: a
    model of the recipe's config that receives the weights and is returned, instead of a newly built one.
    """
    recipe = get_recipe(recipe)
    folder = recipe_dir(recipe, results_dir)
    if results_dir is None:
        if retrain:
            raise ValueError(f"zoo recipe {recipe.name!r}: retrain=True needs a results_dir folder; the shipped zoo "
                             "is never retrained")
        record = cached_record(recipe, None)
        model = _model_for(recipe, record, into)
        weights_path = os.path.join(folder, record["weights_file"])
        try:
            training.load_weights(model, weights_path, WEIGHTS_FORMAT)
        except (OSError, ValueError) as error:
            raise ShippedZooError(f"shipped weights {weights_path} do not load into {recipe.name!r}: {error}") \
                from None
        _LOG.info("zoo: %s: loaded the shipped weights %s", recipe.name, folder)
        return ZooEntry(model, record, trained=False)
    record = None if retrain else cached_record(recipe, results_dir)
    if record is not None:
        model = _model_for(recipe, record, into)
        try:
            training.load_weights(model, os.path.join(folder, record["weights_file"]), WEIGHTS_FORMAT)
        except (OSError, ValueError) as error:
            _LOG.warning("zoo: %s: cannot load %s (%s); retraining", recipe.name, folder, error)
        else:
            _LOG.info("zoo: %s: loaded from %s", recipe.name, folder)
            return ZooEntry(model, record, trained=False)
    entry = _train(recipe, folder, data_dir, cache_dir, verbose)
    if into is None:
        return entry
    _model_for(recipe, entry.record, into).set_weights(entry.model.get_weights())
    return ZooEntry(into, entry.record, entry.trained)


def _model_for(recipe, record, into):
    """``into``, checked to have the config of ``recipe`` with the record's class count, or else a newly built
    model of that config."""
    num_classes = record["data"]["num_classes"]
    if into is None:
        return build_model(recipe, num_classes=num_classes)
    expected = model_config(recipe, num_classes=num_classes)
    if getattr(into, "config", None) != expected:
        raise ValueError(f"into: zoo recipe {recipe.name!r} needs a model of config {expected}, got "
                         f"{getattr(into, 'config', None)}")
    return into


def get_model(recipe, results_dir=DEFAULT_RESULTS_DIR, *, retrain=False, data_dir=None, cache_dir=None,
              verbose="auto"):
    """The trained ``keras.Model`` of ``recipe``; see :func:`load_or_train`."""
    return load_or_train(recipe, results_dir, retrain=retrain, data_dir=data_dir, cache_dir=cache_dir,
                         verbose=verbose).model


def shipped_recipes():
    """The names of :data:`RECIPES` with a folder in the shipped zoo (valid or not), in recipe order."""
    return [name for name in RECIPES if os.path.isdir(os.path.join(SHIPPED_DIR, name))]


def shipped_size_bytes():
    """The total size in bytes of the shipped zoo's files (every ``<SHIPPED_DIR>/<recipe>/*``)."""
    total = 0
    if not os.path.isdir(SHIPPED_DIR):
        return 0
    for name in sorted(os.listdir(SHIPPED_DIR)):
        folder = os.path.join(SHIPPED_DIR, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        total += sum(os.path.getsize(os.path.join(folder, file)) for file in os.listdir(folder)
                     if os.path.isfile(os.path.join(folder, file)))
    return total


def ship(results_dir, recipes=None):
    """Copies the valid entries of ``recipes`` (names or :class:`Recipe` s; default every recipe of
    :data:`RECIPES`) from the folder ``results_dir`` into the shipped zoo (:data:`SHIPPED_DIR`), replacing each
    recipe's shipped folder atomically. Returns ``{name: record}``. ValueError naming the recipe when one has no
    valid entry in ``results_dir`` (checked for every recipe before anything is copied)."""
    _require_folder(results_dir, "ship")
    recipes = list({recipe.name: recipe for recipe in map(get_recipe, RECIPES if recipes is None else recipes)}
                   .values())
    records = {}
    for recipe in recipes:
        record, problem = _check_entry(recipe, recipe_dir(recipe, results_dir))
        if record is None:
            raise ValueError(f"ship: zoo recipe {recipe.name!r} has no valid entry in {results_dir}: "
                             f"{problem or 'not trained'}; train it with python -m experiments.train --recipe "
                             f"{recipe.name} --results-dir {results_dir}")
        records[recipe.name] = record
    os.makedirs(SHIPPED_DIR, exist_ok=True)
    for recipe in recipes:
        source, target = recipe_dir(recipe, results_dir), recipe_dir(recipe, None)
        staging = atomic_io.fresh_sibling(target)
        for name in (records[recipe.name]["weights_file"], training.RECORD_FILE):
            shutil.copyfile(os.path.join(source, name), os.path.join(staging, name))
        copied, problem = _check_entry(recipe, staging)
        if copied != records[recipe.name]:
            shutil.rmtree(staging)
            raise ValueError(f"ship: zoo recipe {recipe.name!r}: {source} changed while it was copied"
                             f"{': ' + problem if problem else ''}")
        atomic_io.replace_folder(staging, target)
        _LOG.info("zoo: %s: shipped from %s", recipe.name, source)
    return records


def _require_folder(results_dir, what):
    if results_dir is None:
        raise ValueError(f"{what}: expected a results_dir folder, got None (the shipped zoo, which is loaded, never "
                         "trained into)")


# Single-threaded training CPU seconds per example and epoch on a 2-core AMD EPYC (AVX-512, oneDNN; the shipped
# zoo's records) and the fixed cost of a run (graph tracing, evaluations): scheduling estimates for train_recipes,
# longest first.
SECONDS_PER_EXAMPLE = {"vit": 0.0028, "mixer": 0.0025, "resnet": 0.0058}
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
    _require_folder(results_dir, "training_task")
    recipe = get_recipe(recipe)
    return parallel.Task(name or recipe.name, _train_recipe, (recipe, os.fspath(results_dir), data_dir, cache_dir),
                         {"verbose": verbose}, cost=estimated_seconds(recipe, data_dir, cache_dir))


def train_recipes(recipes, results_dir=DEFAULT_RESULTS_DIR, *, num_workers=None, retrain=False, data_dir=None,
                  cache_dir=None, on_done=None):
    """Makes sure every recipe of ``recipes`` (names or :class:`Recipe` s) has a valid cache entry, training the
    missing ones in ``num_workers`` single-threaded worker processes (default: one per CPU; 1 trains here, with
    Keras progress bars), the longest first. Returns ``{name: (record, trained)}`` in the order given.
    ``on_done(name, record, trained)`` is called as each recipe is ready (cached ones first). ValueError for
    ``results_dir=None`` (training needs a folder)."""
    _require_folder(results_dir, "train_recipes")
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
    validation_data = None if recipe.validation_split is None else data_lib.load_dataset(
        recipe.dataset, recipe.validation_split, batch_size=512, shuffle=False, **common)
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
        "validation_split": recipe.validation_split,
        "validation_examples": None if recipe.validation_split is None else data_lib.split_size(
            recipe.dataset, recipe.validation_split, data_dir=data_dir, cache_dir=cache_dir),
    }
    record = training.fit(
        model, train_data, test_data, recipe.training, seed=recipe.seed, output_dir=folder,
        train_eval_data=train_eval_data, validation_data=validation_data, weights_format=WEIGHTS_FORMAT,
        verbose=verbose,
        record_extra={
            "recipe": recipe.to_dict(),
            "recipe_fingerprint": recipe.fingerprint(),
            "model_config": json.loads(json.dumps(dataclasses.asdict(model.config))),
            "data": data_record,
        },
    )
    return ZooEntry(model, record, trained=True)
