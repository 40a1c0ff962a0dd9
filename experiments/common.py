"""Plumbing shared by the experiment modules: common options, models by name, evaluation data, the entry point.

Every experiment module ``experiments.<name>`` provides::

    build_parser() -> argparse.ArgumentParser   # add_common_arguments(...) plus its own options
    run(options) -> dict                        # writes its files into options.out (atomically) and returns a
                                                # JSON-able summary with a "findings" list of Finding.to_dict()
    main(argv=None) -> int                      # = common.main(sys.modules[__name__], argv)
    check_options(options)                      # optional: module-specific checks run by check_options below

Every option is checked before any work (:func:`check_options`): the output folder is writable, the dataset has
the split, ``--num-examples`` fits the split and ``--batch-size``, every model spec names a model (and its file
exists), and ranged options (``--mass``, ``--shots``, ``--block`` ...) are in range. A bad option ends the command
with one line naming it and what was expected (exit status 2); ``--debug`` adds the traceback.

A model is named by a *model spec* (``vitcnn_tf.model_specs``): a zoo recipe (``vit``, ``resnet``, ... see
``python -m experiments.train --list``), shipped trained with the package (or, with ``--zoo-dir DIR``, trained on
first use and cached there); a saved Keras model ``path/to/model.keras``; ``PRESET[:key=value,...]=file.npz`` for a
published checkpoint (``ViT-B/16:representation_size=768,num_classes=21843=ckpt/ViT-B_16.npz``); a bare
``PRESET[:key=value,...]`` for a randomly initialised model; or ``init:<spec>``, the architecture of ``<spec>`` at
initialisation (the untrained control).
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback

from vitcnn_tf import runtime

runtime.import_tensorflow()  # quietly, before the modules below import it

from vitcnn_tf import atomic_io  # noqa: E402
from vitcnn_tf import data as data_lib  # noqa: E402
from vitcnn_tf import findings as findings_lib  # noqa: E402
from vitcnn_tf import model_specs as model_spec_lib  # noqa: E402
from vitcnn_tf.atomic_io import json_safe  # noqa: E402

DEFAULT_ZOO_DIR = None  # the trained zoo shipped with the package (vitcnn_tf.zoo.SHIPPED_DIR)
USER_ERRORS = (ValueError, OSError)  # bad options, missing or unreadable files, a full disk: shown as one line
STRATEGIES = ("none", "mirrored", "tpu", "multiworker")
SUMMARY_FILE = "summary.json"
DEFAULT_SEEDS = (0, 1, 2)
CONTROLS = ("init", "none")
CONTROL_FOLDER = "init"
_MODEL_OPTIONS = ("models", "little_data_models")
# the model pools of the run_experiment calls under way (innermost last): a run's models are the earlier runs' model
# objects of the same architectures, with their own weights, so compiled extraction functions are reused
_MODEL_POOL = []


def add_common_arguments(parser, *, default_models, default_num_examples=1024, default_batch_size=128,
                         default_out):
    """Adds ``--models --dataset --data-dir --split --num-examples --batch-size --out --zoo-dir --seed
    --no-progress --strategy``."""
    parser.add_argument("--models", nargs="+", default=list(default_models), metavar="SPEC",
                        help="model specs: zoo recipes, .keras files or PRESET=checkpoint.npz "
                             "(default: %(default)s)")
    parser.add_argument("--dataset", default=data_lib.DEFAULT_DATASET,
                        help="evaluation dataset: shapes10, digits, image_folder or a tfds name (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir / image folder root")
    parser.add_argument("--split", default=None,
                        help="evaluation split (default: 'validation' for imagenet2012, else 'test'; tfds slicing "
                             "such as 'validation[:10%%]' is allowed)")
    parser.add_argument("--num-examples", type=_positive_int, default=default_num_examples,
                        help="evaluation examples, a class-balanced (stratified) subset of the evaluation split "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=_batch_size, default=default_batch_size,
                        help="examples per minibatch, >= 4 for unbiased HSIC (default: %(default)s)")
    parser.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    parser.add_argument("--zoo-dir", default=DEFAULT_ZOO_DIR,
                        help="folder of a zoo trained from the recipes (trained there on first use); default: the "
                             "trained zoo shipped with the package")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, shuffles and resamples")
    parser.add_argument("--seeds", type=_seed, nargs="+", default=list(DEFAULT_SEEDS), metavar="S",
                        help="training seeds: the analysis runs once per seed, every zoo model replaced by its twin "
                             "trained with seed S (vit -> vit_seed1; a model without one leaves that run), and the "
                             "findings are pooled with two-level intervals (default: %(default)s)")
    parser.add_argument("--control", choices=CONTROLS, default="init",
                        help="'init' also runs the analysis on the same architectures at initialisation (untrained "
                             "weights): every finding's control; 'none' skips it (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--strategy", choices=STRATEGIES, default="none",
                        help="tf.distribute strategy for extraction and CKA accumulation (default: none)")
    add_debug_argument(parser)
    return parser


def add_debug_argument(parser):
    """Adds ``--debug``: an error shows its traceback, not only its one-line message."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


class UserError(ValueError):
    """A bad option or input file: reported as one line naming the option, without a traceback."""


def add_seed_replicates_argument(parser, default):
    """Adds ``--seed-replicates MODEL=SPEC ...``: models trained like ``MODEL`` (a spec of ``--models``) with another
    seed, used for intervals over seeds; entries whose ``MODEL`` is not in ``--models`` are ignored."""
    parser.add_argument("--seed-replicates", nargs="*", default=list(default), metavar="MODEL=SPEC",
                        help="another trained seed of a model of --models, for intervals over seeds (repeat a "
                             "MODEL for more seeds; '--seed-replicates' alone: none; default: %(default)s)")


def add_probe_arguments(parser):
    """Adds the few-shot linear probe options ``--shots --probe-seeds --train-pool --l2-reg --max-feature-gb``
    (``vitcnn_tf.paper.linear_probes``)."""
    from vitcnn_tf.analysis import probes
    from vitcnn_tf.paper import linear_probes

    parser.add_argument("--shots", type=int, default=10, help="training examples per class (default: %(default)s)")
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=list(range(5)), metavar="SEED",
                        help="one few-shot draw per seed (default: 0 .. 4)")
    parser.add_argument("--train-pool", type=int, default=512,
                        help="stratified train-split examples the few-shot sets are drawn from (default: %(default)s)")
    parser.add_argument("--l2-reg", type=float, default=probes.DEFAULT_L2_REG,
                        help="ridge penalty (default: 2**10, big_vision's)")
    parser.add_argument("--max-feature-gb", type=float, default=linear_probes.DEFAULT_MAX_FEATURE_BYTES / 2**30,
                        help="GiB of train and test probe features held at once; layers are extracted in chunks "
                             "that fit (default: %(default)s)")


def add_check_arguments(parser):
    """Adds ``--check-examples`` and ``--null-permutations``: the Procrustes and permutation-null checks of the CKA
    findings (``vitcnn_tf.paper.measure_checks``)."""
    from vitcnn_tf.paper import measure_checks

    parser.add_argument("--check-examples", type=_positive_int, default=measure_checks.DEFAULT_CHECK_EXAMPLES,
                        help="evenly spaced examples of the CKA findings' checks (Procrustes, permutation null), "
                             "rounded down to whole minibatches (default: %(default)s)")
    parser.add_argument("--null-permutations", type=_positive_int, default=measure_checks.DEFAULT_NULL_PERMUTATIONS,
                        help="shuffles of the permutation null of the compared CKA (default: %(default)s)")


def seed_replicates(options):
    """``{spec of --models: [replicate specs]}`` from ``--seed-replicates`` (models without replicates left out)."""
    replicates = {}
    for entry in getattr(options, "seed_replicates", None) or []:
        model, separator, replicate = entry.partition("=")
        if not separator or not model or not replicate:
            raise ValueError(f"--seed-replicates: expected MODEL=SPEC, got {entry!r}")
        if model in options.models:
            replicates.setdefault(model, []).append(replicate)
    return replicates


def model_specs(options):
    """Every model spec ``options`` uses: ``--models``, the replicates of ``--seed-replicates``,
    ``--little-data-models``, then the seed twins of ``--seeds`` and the initialisation controls of
    ``--control init`` (:func:`experiment_runs`)."""
    specs = list(getattr(options, "models", []))
    extra = [spec for replicates in seed_replicates(options).values() for spec in replicates]
    extra += list(getattr(options, "little_data_models", None) or [])
    for _, run_options, skipped in experiment_runs(options, check=False):
        if not skipped:
            extra += [spec for option in _MODEL_OPTIONS for spec in getattr(run_options, option, None) or []]
    specs += [spec for spec in dict.fromkeys(extra) if spec not in specs]
    return specs


def experiment_runs(options, module=None, *, check=True):
    """The runs of one experiment: ``[(name, options of the run, why it is skipped or "")]``.

    One run per seed of ``--seeds`` (``"seed<S>"``), whose model options (``--models``, ``--little-data-models``)
    name each model's twin trained with seed ``S`` (``vitcnn_tf.model_specs.seed_twin``); a model without that twin
    leaves the run. The first seed's run writes into ``--out``, the others into ``--out/seed<S>``. With
    ``--control init``, one more run (``"init"``, into ``--out/init``) on every model at initialisation
    (``vitcnn_tf.model_specs.init_spec``). Every run writes its data files and summary; only the first draws its
    figures and computes the findings' checks (Procrustes, permutation null: the pooled findings keep the first
    run's checks).
    With ``check`` (and ``module``), a run whose reduced models fail the module's own ``check_options`` is skipped
    with the reason. ``--seed-replicates`` stays with the first run only.
    """
    from vitcnn_tf import model_specs as specs_lib

    seeds = list(dict.fromkeys(getattr(options, "seeds", None) or [0]))
    runs = []
    for index, seed in enumerate(seeds):
        out = options.out if index == 0 else os.path.join(options.out, f"seed{seed}")
        runs.append((f"seed{seed}", *_run_options(options, out, lambda spec, s=seed: specs_lib.seed_twin(spec, s),
                                                  first=index == 0, module=module, check=check)))
    if getattr(options, "control", "none") == "init":
        def init(spec):
            try:
                return specs_lib.init_spec(spec)
            except ValueError:
                return None
        runs.append((CONTROL_FOLDER, *_run_options(options, os.path.join(options.out, CONTROL_FOLDER), init,
                                                   first=False, module=module, check=check)))
    return runs


def _run_options(options, out, twin, *, first, module, check):
    """``(options of one run, why it is skipped or "")``: every model option mapped through ``twin`` (None: the
    model leaves the run, with its little-data twin at the same position); only the ``first`` run keeps the figures,
    the permutation nulls and ``--seed-replicates``."""
    run_options = argparse.Namespace(**vars(options))
    run_options.out, run_options.seeds, run_options.control = out, [0], "none"
    run_options.figures = first
    if not first and hasattr(options, "check_examples"):
        run_options.check_examples = 0
    if not first and hasattr(options, "seed_replicates"):
        run_options.seed_replicates = []
    models = [twin(spec) for spec in options.models]
    little = getattr(options, "little_data_models", None)
    little = None if little is None else [twin(spec) for spec in little]
    keep = [i for i, spec in enumerate(models) if spec is not None and (little is None or i >= len(little)
                                                                        or little[i] is not None)]
    dropped = [options.models[i] for i in range(len(models)) if i not in keep]
    run_options.models = [models[i] for i in keep]
    if little is not None:
        run_options.little_data_models = [little[i] for i in keep if i < len(little)]
    if not run_options.models and (options.models or not first):
        return run_options, "no model has this twin" if options.models else "the experiment takes no models"
    if check and dropped and hasattr(module, "check_options"):
        try:
            module.check_options(run_options)
        except UserError as error:
            return run_options, f"without {', '.join(dropped)} (no such twin): {error}"
    return run_options, ""


def run_experiment(module, options, pool=None):
    """Runs ``module.run`` once per run of :func:`experiment_runs` and returns the first run's summary: as it is when
    no other run takes place, else with the findings pooled over the seeds, each with its control
    (``vitcnn_tf.findings.pool_seeds``; the claims of ``vitcnn_tf.claims`` say which are about learning), and
    ``runs``: every run's name, folder, models and why it was skipped. The pooled summary replaces the first run's
    ``summary.json``. The runs share a ``vitcnn_tf.model_specs.ModelPool`` (``pool``, e.g. one kept by the caller
    for several experiments; default a new one): a run's models are the earlier runs' model objects of the same
    architectures, with the run's own weights, so what was compiled for them is reused."""
    from vitcnn_tf import claims

    runs = experiment_runs(options, module)
    summaries, listing = {}, []
    _MODEL_POOL.append(model_spec_lib.ModelPool() if pool is None else pool)
    try:
        for name, run_options, skipped in runs:
            if not skipped:
                try:
                    summaries[name] = module.run(run_options)
                finally:
                    _MODEL_POOL[-1].release()
            listing.append({"name": name, "folder": os.path.relpath(run_options.out, options.out),
                            "models": run_options.models, "skipped": skipped})
    finally:
        _MODEL_POOL.pop()
    first = runs[0][0]
    if first not in summaries:
        raise UserError(f"--seeds {options.seeds[0]}: {runs[0][2]}")
    if len(summaries) == 1:  # nothing to pool: no other seed, no control
        return summaries[first]
    by_run = {name: {item["key"]: findings_lib.Finding.from_dict(item) for item in summary.get("findings", [])}
              for name, summary in summaries.items()}
    control = by_run.get(CONTROL_FOLDER, {})
    pooled = []
    for key in by_run[first]:
        per_seed = {int(name[len("seed"):]): found[key] for name, found in by_run.items()
                    if name != CONTROL_FOLDER and key in found}
        learned = key in claims.CLAIMS and claims.CLAIMS[key].learned
        item = findings_lib.pool_seeds(per_seed, control=control.get(key), learned=learned,
                                       seed=options.seed).to_dict()
        if item["control"] is not None:
            item["control"]["models"] = list(summaries[CONTROL_FOLDER].get("models", {}))
        pooled.append(item)
    summary = {**summaries[first], "findings": pooled, "runs": listing}
    return write_summary(options, summary)


def distribution_strategy(options):
    """The ``tf.distribute.Strategy`` named by ``--strategy`` (None for ``none``).

    ``mirrored``: every local GPU, or every logical CPU device when there is no GPU; ``tpu``: the TPU found by
    ``TPUClusterResolver`` (a Cloud TPU VM or ``--tpu`` address in ``TPU_NAME``); ``multiworker``: the cluster
    in ``TF_CONFIG``.
    """
    import tensorflow as tf

    name = getattr(options, "strategy", "none")
    if name == "none":
        return None
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``<prog>: error: <message> (--help lists the options)``,
    with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (--help lists the options)\n")


def new_parser(module_doc, prog):
    """A :class:`OneLineErrorParser` whose help text is the module docstring."""
    return OneLineErrorParser(prog=prog, description=module_doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def one_line(text):
    """``text`` on one line: its lines joined with ``"; "``."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


@contextlib.contextmanager
def user_errors(parser, debug=False):
    """Ends the command with one line (``parser.error``, exit status 2) when the block raises one of
    :data:`USER_ERRORS` (a bad option, a missing or unreadable file); with ``debug`` the traceback comes first.
    Other exceptions (bugs) keep their traceback."""
    try:
        yield
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        message = one_line(error) if isinstance(error, UserError) else \
            f"{type(error).__name__}: {one_line(error)}" + ("" if debug else " (--debug shows the traceback)")
        parser.exit(2, f"{parser.prog}: error: {message}\n")


def check_writable_folder(option, folder):
    """Creates ``folder`` if needed and checks a file can be written in it; UserError naming ``option`` otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{option} {folder}: expected a writable folder ({error.strerror or error})") from None


def check_options(module, options, *, check_out=True):
    """Checks every option of an experiment module before any work; raises :class:`UserError` naming the option.

    The output folder is writable; the dataset has the split (every label a class index); ``--num-examples`` is at
    most the split's size and at least ``--batch-size`` (a full minibatch); every model spec of ``--models``,
    ``--little-data-models`` and ``--seed-replicates`` names a zoo recipe, a preset or an existing file; the ranged
    options a module has are in range (``--mass`` in (0, 1], ``--shots``, ``--train-pool``, ``--token-grid``,
    resamples >= 1, ``--max-channels`` >= 0, ``--fractions`` in (0, 1], ``--block`` a block of the first ViT of
    ``--models``, ``--window-sizes`` at most its heads). Then the module's own ``check_options(options)``, if any.
    ``check_out=False`` leaves the output folder alone (a caller that checked it already).
    """
    if check_out:
        check_writable_folder("--out", options.out)
    split = evaluation_split(options)
    try:
        data_lib.check_split(options.dataset, split, data_dir=options.data_dir)
        size = data_lib.split_size(options.dataset, split, data_dir=options.data_dir)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(f"--dataset {options.dataset} --split {split}: {one_line(error)}") from None
    if options.num_examples > size:
        raise UserError(f"--num-examples {options.num_examples}: expected at most the {size} examples of split "
                        f"{split!r} of {options.dataset}")
    if options.num_examples < options.batch_size:
        raise UserError(f"--num-examples {options.num_examples}: expected at least --batch-size "
                        f"{options.batch_size} (one full minibatch); give a smaller --batch-size")
    configs = {}
    for option in ("models", "little_data_models"):
        for spec in getattr(options, option, None) or []:
            configs[spec] = spec_config(spec, options, f"--{option.replace('_', '-')}")
    for replicates in seed_replicates(options).values():
        for spec in replicates:
            configs[spec] = spec_config(spec, options, "--seed-replicates")
    _check_ranges(options)
    _check_block(options, [configs[spec] for spec in options.models if configs[spec] is not None])
    if hasattr(module, "check_options"):
        module.check_options(options)


def spec_config(spec, options, option="--models"):
    """The config dataclass of the model named by ``spec`` (a zoo recipe, a preset, a checkpoint or the init spec of
    one) without building it; None for a ``.keras`` file (checked when loaded). UserError naming ``option`` for a
    spec that names no model or a missing file (an init spec needs no file)."""
    from vitcnn_tf import zoo
    from vitcnn_tf.models import registry

    try:
        parsed = model_spec_lib.parse_model_spec(spec)
        if parsed.path is not None and not os.path.isfile(parsed.path):
            raise UserError(f"{option} {spec}: no file {parsed.path!r} (absolute: {os.path.abspath(parsed.path)})")
        if parsed.kind == "init":
            parsed = parsed.inner
        if parsed.kind == "zoo":
            return zoo.model_config(parsed.text, data_dir=getattr(options, "data_dir", None))
        if parsed.kind == "keras":
            return None
        return registry.model_config(parsed.preset, **parsed.overrides)
    except UserError:
        raise
    except (ValueError, TypeError) as error:
        raise UserError(f"{option} {spec}: {one_line(error)}") from None


def config_family(config):
    """``"vit"``, ``"resnet"`` or ``"mixer"``: the registry family of a model config (None for None)."""
    from vitcnn_tf.models import registry

    if config is None:
        return None
    return next(family.name for family in registry.FAMILIES if isinstance(config, family.config_class))


def check_model_families(options, *option_names, allowed, required=()):
    """Checks that every model of the options ``option_names`` (dests such as ``"models"``) is of a family in
    ``allowed`` and that ``required`` families are among them (``.keras`` files are checked when loaded);
    UserError naming the option and the spec. For a module's ``check_options``."""
    found = []
    for name in option_names:
        option = f"--{name.replace('_', '-')}"
        for spec in getattr(options, name, None) or []:
            family = config_family(spec_config(spec, options, option))
            if family is not None and family not in allowed:
                raise UserError(f"{option} {spec}: a {family} model; expected {' or '.join(allowed)}")
            found.append(family)
    missing = [family for family in required if family not in found]
    if missing and None not in found:
        raise UserError(f"--{option_names[0].replace('_', '-')} {' '.join(getattr(options, option_names[0]))}: "
                        f"expected a {' and a '.join(missing)} model among them")


def check_token_roles(options):
    """The Section 7 roles of ``--models``: one CLS-token ViT, at most one GAP ViT and at most one ResNet;
    UserError naming ``--models`` otherwise. For a module's ``check_options``."""
    roles = {"CLS-token ViT": [], "GAP ViT": [], "ResNet": [], "other": []}
    unknown = False
    for spec in options.models:
        config = spec_config(spec, options)
        family = config_family(config)
        if family is None:
            unknown = True
        elif family == "vit":
            roles["CLS-token ViT" if config.classifier == "token" else "GAP ViT"].append(spec)
        else:
            roles["ResNet" if family == "resnet" else "other"].append(spec)
    twice = [role for role in ("CLS-token ViT", "GAP ViT", "ResNet") if len(roles[role]) > 1]
    if roles["other"] or twice or (not roles["CLS-token ViT"] and not unknown):
        raise UserError(f"--models {' '.join(options.models)}: expected one CLS-token ViT, at most one GAP ViT and "
                        "at most one ResNet")


_AT_LEAST_ONE = ("shots", "train_pool", "token_grid", "num_resamples", "bootstrap_resamples", "passes")


def _check_ranges(options):
    for name in _AT_LEAST_ONE:
        value = getattr(options, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected an integer >= 1")
    mass = getattr(options, "mass", None)
    if mass is not None and not 0 < mass <= 1:
        raise UserError(f"--mass {mass}: expected a fraction in (0, 1]")
    max_channels = getattr(options, "max_channels", None)
    if max_channels is not None and max_channels < 0:
        raise UserError(f"--max-channels {max_channels}: expected an integer >= 0 (0: every channel)")
    fractions = getattr(options, "fractions", None)
    if fractions is not None and not all(0 < fraction <= 1 for fraction in fractions):
        raise UserError(f"--fractions {' '.join(map(str, fractions))}: expected fractions in (0, 1]")
    if hasattr(options, "probe_seeds") and not options.probe_seeds:
        raise UserError("--probe-seeds: expected at least one seed")
    if getattr(options, "max_feature_gb", 1) <= 0:
        raise UserError(f"--max-feature-gb {options.max_feature_gb}: expected a positive size")
    pool = getattr(options, "train_pool", None)
    if pool is not None:
        try:
            size = data_lib.split_size(options.dataset, "train", data_dir=options.data_dir)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(f"--train-pool: the probes draw from split 'train' of {options.dataset}: "
                            f"{one_line(error)}") from None
        if pool > size:
            raise UserError(f"--train-pool {pool}: expected at most the {size} examples of split 'train' of "
                            f"{options.dataset}")


def _check_block(options, configs):
    """``--block`` (and ``--window-sizes``) against the first ViT of ``--models`` (``configs`` in order)."""
    if not hasattr(options, "block"):
        return
    vit = next((config for config in configs if config_family(config) == "vit"), None)
    layers = vit.num_layers if vit is not None else None
    if options.block < 0 or (layers is not None and options.block >= layers):
        expected = f"a block of the ViT, 0 .. {layers - 1}" if layers is not None else "a block index >= 0"
        raise UserError(f"--block {options.block}: expected {expected}")
    sizes = getattr(options, "window_sizes", None) or []
    if vit is not None and any(size > vit.num_heads for size in sizes):
        raise UserError(f"--window-sizes {' '.join(map(str, sizes))}: expected sizes of at most the ViT's "
                        f"{vit.num_heads} heads")


def load_models(specs, options):
    """``{label: keras.Model}`` for the model specs, in order (``vitcnn_tf.model_specs.load_models``), with the zoo
    folder, data folder and progress of ``options``; within :func:`run_experiment`, from its model pool."""
    return model_spec_lib.load_models(specs, pool=_MODEL_POOL[-1] if _MODEL_POOL else None, zoo_dir=options.zoo_dir,
                                      data_dir=getattr(options, "data_dir", None),
                                      verbose="auto" if getattr(options, "progress", True) else 0)


def zoo_test_accuracy(spec, options):
    """The test accuracy in the zoo record of recipe ``spec`` (full test split; the shipped zoo's record for
    ``--zoo-dir`` None), or None for other specs and recipes not trained in the ``--zoo-dir`` folder."""
    from vitcnn_tf import zoo

    if spec not in zoo.RECIPES:
        return None
    record = zoo.cached_record(spec, options.zoo_dir)
    return None if record is None else record.get("test_accuracy")


def image_size(models):
    """The input side ``S`` shared by ``models`` (``{label: model}`` with inputs ``[n, S, S, C]``;
    ``vitcnn_tf.paper.common.shared_image_size``): an error names the labels and sizes."""
    from vitcnn_tf.paper import common as paper_common

    return paper_common.shared_image_size(models)


def evaluation_split(options):
    """The split the experiments evaluate on: ``--split``, else the dataset's labelled held-out split
    (:func:`vitcnn_tf.data.evaluation_split`: ``validation`` for imagenet2012, else ``test``)."""
    return getattr(options, "split", None) or data_lib.evaluation_split(options.dataset)


def evaluation_data(options, size, *, split=None, num_examples=None, shuffle_seed=None, full_batches=True):
    """Batches ``(images [b, size, size, 3], labels [b])`` of a class-balanced (stratified) subset of ``split``
    (default :func:`evaluation_split`), whose labels are checked first (an unlabelled split is an error naming it).

    With ``full_batches`` (for minibatch CKA and its resampling) a last partial batch is dropped, so every minibatch
    has ``--batch-size`` examples; without it (a probe's training pool) every example is kept. ``shuffle_seed``
    reshuffles the order (for Nguyen et al.'s repeated shuffled passes), None keeps the stored order.
    """
    split = evaluation_split(options) if split is None else split
    num_examples = options.num_examples if num_examples is None else num_examples
    if full_batches and num_examples < options.batch_size:
        raise UserError(f"--num-examples={num_examples} is smaller than --batch-size={options.batch_size}: "
                        "no full minibatch")
    data_lib.check_split(options.dataset, split, data_dir=options.data_dir)
    split_size = data_lib.split_size(options.dataset, split, data_dir=options.data_dir)
    if num_examples > split_size:
        raise UserError(f"{num_examples} examples asked of split {split!r} of {options.dataset}, which has "
                        f"{split_size}")
    subset = dict(num_examples=num_examples) if num_examples < split_size else {}
    return data_lib.load_dataset(options.dataset, split, batch_size=options.batch_size, image_size=size,
                                 seed=0 if shuffle_seed is None else shuffle_seed, shuffle=shuffle_seed is not None,
                                 subset_seed=options.seed, data_dir=options.data_dir, drop_remainder=full_batches, **subset)


def main(module, argv=None):
    """Entry point of an experiment module: parse, :func:`check_options`, ``run``, print the findings table and the
    output folder. A bad option or input file ends it with one line (:func:`user_errors`)."""
    parser = module.build_parser()
    options = parser.parse_args(argv)
    with user_errors(parser, getattr(options, "debug", False)):
        check_options(module, options)
        summary = run_experiment(module, options)
    found = [findings_lib.Finding.from_dict(item) for item in summary.get("findings", [])]
    if found:
        print(findings_lib.findings_table(found))
    print(f"outputs in {os.path.abspath(options.out)}")
    return 0


def write_summary(options, summary):
    """Write ``summary`` as ``<out>/summary.json`` (atomically, valid JSON: ``vitcnn_tf.atomic_io.write_json``
    notes replaced non-finite numbers) and return the JSON-safe dict that was written."""
    return atomic_io.write_json(os.path.join(options.out, SUMMARY_FILE), summary)


def write_result(options, result, *, models=None, started=None, dpi=120):
    """Write a :class:`vitcnn_tf.paper.result.SectionResult` into ``options.out``, atomically: one ``<stem>.npz``
    per array group, one ``<stem>.json`` per table, every figure as drawn (none when ``options.figures`` is false:
    the runs of other seeds and the control), and ``summary.json`` last (see :func:`write_summary`); returns the
    JSON-safe summary.

    ``models`` (``{label: model spec}``) is recorded first in the summary, and the seconds since ``started`` (a
    ``time.perf_counter()`` value, rounded to 0.1 s) last."""
    import matplotlib.pyplot as plt

    if models is not None:
        result.summary = {"models": dict(models), **result.summary}
    if started is not None:
        result.summary["seconds"] = round(time.perf_counter() - started, 1)
    for stem, arrays in result.arrays.items():
        atomic_io.save_npz(os.path.join(options.out, f"{stem}.npz"), **arrays)
    for stem, table in result.tables.items():
        atomic_io.write_json(os.path.join(options.out, f"{stem}.json"), json_safe(table)[0])
    for figure_spec in result.figures if getattr(options, "figures", True) else ():
        figure = figure_spec.draw()
        atomic_io.save_figure(figure, os.path.join(options.out, figure_spec.file), dpi=dpi)
        plt.close(figure)
    return write_summary(options, result.to_summary())


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _seed(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed >= 0, got {text}")
    return value


def _batch_size(text):
    value = int(text)
    if value < 4:
        raise argparse.ArgumentTypeError(f"expected a batch size >= 4 (unbiased HSIC needs 4 examples), got {text}")
    return value


if __name__ == "__main__":
    sys.exit("experiments.common is a library module; run e.g. python -m experiments.sec4_representation_structure")
