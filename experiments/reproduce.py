"""Reproduce the paper: train (or reuse) the models, run every experiment of Sections 4 to 8, write a report.

    python -m experiments.reproduce                         # CPU preset: the shipped zoo, offline, about 5 min
    python -m experiments.reproduce --only sec4,sec6        # a subset of the stages (prefixes of stage names)
    python -m experiments.reproduce --preset paper --checkpoints ckpt/ --data-dir ~/tensorflow_datasets
    python -m experiments.reproduce --preset paper --checkpoints ckpt/ --dataset image_folder --data-dir imgs/ \
        --num-examples 64 --num-examples sec5_receptive=8 --model gap_vit=ViT-B/16:classifier=gap=gap.npz

The work: the CPU preset's models come from the trained zoo shipped with the package (every record checked
against its weights and recipe before any stage runs; a mismatch is an error naming the file); with ``--zoo-dir DIR``
or ``--retrain-zoo`` the zoo models the stages use that are not in that folder yet are trained there first, as
``python -m experiments.train`` does. Then one stage per experiment module
(``sec4_representation_structure`` ... ``sec8_data_scale``). They run in ``--jobs`` single-threaded worker
processes (default: one per CPU for the CPU preset; ``vitcnn_tf.parallel``), each stage as soon as its models are
trained, the longest jobs first; ``--jobs 1`` runs everything in this process with progress bars. A worker dies
with this process (even on ``kill -9``).

Stages and their records. A stage writes into a fresh hidden folder beside ``<out>/<stage>/``, finishes it with
``stage.json`` (its record: a fingerprint of everything that affects it, every output file with its sha256, the
models with their hashes, its example count and command line), and only then the folder replaces
``<out>/<stage>/`` (:func:`vitcnn_tf.atomic_io.replace_folder`); a kill at any moment leaves the previous complete
folder or none. The fingerprint covers its options (paths made absolute and normalised; the zoo folder and the
output folder left out), the identity of its models (zoo recipe fingerprints and weight hashes, checkpoint hashes),
the dataset, and its code (the stage module, the ``experiments`` helpers it imports and the ``vitcnn_tf``
package). A stage whose record has the same fingerprint and whose listed files are all there, unchanged, is not run
again; otherwise the run says why (settings changed, an output missing or changed) and runs it again. So an
interrupted run resumes where it stopped, and a changed setting reruns exactly the stages it affects.

One run at a time per output folder: a second run into it is refused (an ``fcntl`` lock on ``<out>/.lock``, freed
by the kernel when its holder dies). Temporary files and folders of a killed run are removed at the start.

Every option is checked before any work (each stage's options by :func:`experiments.common.check_options`); a bad
one ends the run with one line naming it (``--debug`` adds the traceback).

``--preset paper`` runs the paper's figures on the published checkpoints of ``CHECKPOINTS`` (expected in
``--checkpoints``, nothing is downloaded), at their 224 px, on tfds ``imagenet2012`` split ``validation`` by
default, with the paper's example counts (``PAPER_STAGES``). Before any work it checks the dataset (split
present, every label a class index) and every checkpoint (each array's shape against the model's), then prints
which figures run and which are skipped, and why: a missing file skips only the figures that need it; a wrong
file under a right name is an error naming the file, the key and both shapes. ``--model NAME=SPEC`` replaces a
checkpoint of the table (``SPEC`` = ``PRESET[:key=value,...]=file.npz``); ``--model gap_vit=SPEC`` adds the
optional GAP ViT of Figures 10 and 11.

Outputs: every stage's data files and figures, ``findings.json``, ``report.md`` and a self-contained
``report.html`` (:mod:`vitcnn_tf.report`): a summary header (verdict counts, models with their sha256, dataset,
split, example counts, hardware, time), the paper's claims beside our verdicts, and the figures in the paper's
order with captions. The report is built from every valid stage record in ``--out`` with this run's preset, dataset
and split, so ``--only`` updates its stages and keeps the others. It describes the folder, not the invocation: a
stage shows the time it took when it ran, whether in this run or an earlier one. The terminal shows the plan, one
progress line per stage or training with an estimate of the time left, and a one-screen summary at the end.
``--strategy mirrored|tpu|multiworker`` runs representation extraction and CKA accumulation
under that ``tf.distribute`` strategy.
"""

import argparse
import ast
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
import traceback
import zipfile

import numpy as np

from vitcnn_tf import parallel, runtime

# The stage modules, which the worker server imports with TensorFlow (see start_worker_server_early)
STAGE_MODULES = ("experiments.sec4_representation_structure", "experiments.sec5_attention_distance",
                 "experiments.sec5_local_global_heads", "experiments.sec5_receptive_fields",
                 "experiments.sec6_skip_connections", "experiments.sec7_localization", "experiments.sec7_linear_probes",
                 "experiments.sec8_data_scale")


def default_jobs(preset, strategy):
    """``--jobs`` when not given: one worker per CPU for the CPU preset without a strategy, else 1 (this process)."""
    return parallel.default_num_workers() if preset == "cpu" and strategy == "none" else 1


def start_worker_server_early(argv):
    """Starts the server that forks the worker processes (``vitcnn_tf.parallel.start_worker_server``, with
    ``experiments.common`` and :data:`STAGE_MODULES`) when the command line ``argv`` runs stages in workers, i.e.
    unless it asks for ``--help`` or one job. Called before this process imports TensorFlow, so that the server's
    import of TensorFlow and the stages runs beside this process's own, and every worker starts with them loaded.
    Returns whether it started the server; a command line it cannot read is left to the full parser."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    early.add_argument("-h", "--help", action="store_true")
    early.add_argument("--preset", default="cpu")
    early.add_argument("--strategy", default="none")
    early.add_argument("--jobs", default=None)
    try:
        known, _ = early.parse_known_args(argv)
        jobs = default_jobs(known.preset, known.strategy) if known.jobs is None else int(known.jobs)
    except (argparse.ArgumentError, ValueError):
        return False
    if known.help or jobs < 2:
        return False
    parallel.start_worker_server(preload=("experiments.common", *STAGE_MODULES))
    return True


if __name__ == "__main__":
    start_worker_server_early(sys.argv[1:])

from experiments import common  # noqa: E402
from vitcnn_tf import atomic_io  # noqa: E402
from vitcnn_tf import findings as findings_lib  # noqa: E402
from vitcnn_tf import model_specs  # noqa: E402
from vitcnn_tf import report as report_lib  # noqa: E402
from vitcnn_tf import training  # noqa: E402

STAGE_FILE = "stage.json"
# options left out of a stage's fingerprint: where results go, how they are shown, and the zoo folder (its models
# enter the fingerprint by their recipe fingerprints and weight hashes)
_NOT_AFFECTING_RESULTS = ("out", "progress", "debug", "zoo_dir")
_PATH_OPTIONS = ("data_dir",)  # made absolute and normalised in the fingerprint
_SPEC_OPTIONS = ("models", "little_data_models")  # model specs, with file paths made absolute
STAGE_FORMAT = 2
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_BATCH = 4  # unbiased HSIC needs 4 examples per minibatch


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint of the paper preset: ``name`` (its key for ``--model NAME=SPEC``), the release
    ``file`` expected in ``--checkpoints``, the model ``preset`` and the config ``overrides`` that make the release
    load (head size, pre-logits), where it is published (``url``) and which paper ``figures`` it feeds."""

    name: str
    file: str
    preset: str
    overrides: str
    url: str
    figures: str
    description: str

    def spec(self, folder):
        """The model spec ``PRESET[:overrides]=<folder>/<file>``."""
        preset = f"{self.preset}:{self.overrides}" if self.overrides else self.preset
        return f"{preset}={os.path.join(folder, self.file)}"


_VIT_JAX = "https://storage.googleapis.com/vit_models"
CHECKPOINTS = (
    Checkpoint("vit_b16", "ViT-B_16.npz", "ViT-B/16", "representation_size=768,num_classes=21843",
               f"{_VIT_JAX}/imagenet21k/ViT-B_16.npz", "1, 2, 5, 6, 7, 9, 11",
               "ViT-B/16 pre-trained on ImageNet-21k (CLS token, 768-d pre-logits, 21,843 classes)"),
    Checkpoint("vit_l16", "ViT-L_16.npz", "ViT-L/16", "representation_size=1024,num_classes=21843",
               f"{_VIT_JAX}/imagenet21k/ViT-L_16.npz", "1, 2",
               "ViT-L/16 pre-trained on ImageNet-21k (CLS token, 1024-d pre-logits, 21,843 classes)"),
    Checkpoint("bit_r50", "BiT-M-R50x1.npz", "BiT-R50x1", "num_classes=21843",
               "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz", "1, 2, 5, 6, 7, 9, 11",
               "BiT-M ResNet50x1 pre-trained on ImageNet-21k (21,843 classes)"),
    Checkpoint("mixer_b16", "Mixer-B_16.npz", "Mixer-B/16", "num_classes=21843",
               "https://storage.googleapis.com/mixer_models/imagenet21k/Mixer-B_16.npz", "1, 2 (Section H)",
               "MLP-Mixer B/16 pre-trained on ImageNet-21k (21,843 classes)"),
    Checkpoint("augreg_b16_i1k", "B_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz", "ViT-B/16",
               "num_classes=1000", f"{_VIT_JAX}/augreg/B_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz",
               "4, 12, 13", "AugReg ViT-B/16 pre-trained on ImageNet-1k only (1,000 classes, no pre-logits)"),
    Checkpoint("augreg_b16_i21k", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", "ViT-B/16",
               "num_classes=21843",
               f"{_VIT_JAX}/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", "3, 4, 12, 13",
               "AugReg ViT-B/16 pre-trained on ImageNet-21k (21,843 classes, no pre-logits)"),
    Checkpoint("augreg_l16_i1k", "L_16-i1k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz", "ViT-L/16",
               "num_classes=1000", f"{_VIT_JAX}/augreg/L_16-i1k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz",
               "4", "AugReg ViT-L/16 pre-trained on ImageNet-1k only (1,000 classes, no pre-logits)"),
    Checkpoint("augreg_l16_i21k", "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz", "ViT-L/16",
               "num_classes=21843",
               f"{_VIT_JAX}/augreg/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz", "3, 4",
               "AugReg ViT-L/16 pre-trained on ImageNet-21k, the same recipe as its ImageNet-1k twin"),
)
OPTIONAL_MODELS = {"gap_vit": "a ViT trained with global average pooling (no public release in the .npz format; "
                              "give one with --model gap_vit=PRESET:classifier=gap,...=file.npz, or a timm "
                              "file.safetensors such as vit_base_patch16_gap_224's)"}
IMAGENET1K_FRACTION = 0.09  # ImageNet-1k's 1.28M training images are 9% of ImageNet-21k's 14.2M


@dataclasses.dataclass(frozen=True)
class PaperStage:
    """How ``--preset paper`` runs a stage.

    Attributes:
      models: checkpoint names (``CHECKPOINTS`` or ``OPTIONAL_MODELS``) passed as ``--models``, in order.
      optional: those of ``models`` the stage runs without (it loses only their figures).
      figures: ``(paper figure, checkpoint names it needs)`` pairs, in the paper's order.
      num_examples: the paper's example count (None: the paper gives none; the stage's default is used).
      batch_size: a minibatch that fits the paper's models on a 16 GB GPU.
      min_batches: minibatches the stage needs (2 where intervals resample minibatches).
      twins: ``(option, names)``: the ``i``-th name is the twin of the ``i``-th of ``models`` (e.g. a little-data
        model); passed only when every model given has its twin (else the twins' figures are skipped).
      extra: further ``(option, value...)`` argv, passed when the stage's parser has the option.
      source: the paper's passage behind ``num_examples``.
    """

    models: tuple
    figures: tuple
    batch_size: int
    num_examples: int | None = None
    optional: tuple = ()
    min_batches: int = 1
    twins: tuple = ()
    extra: tuple = ()
    source: str = "not stated in the paper; the stage's default"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One experiment module run as a stage; ``paper`` None means: not available with public checkpoints
    (``paper_skip`` says why)."""

    name: str
    section: str
    title: str
    paper: PaperStage | None
    module: str = ""  # the module with build_parser() / run(options); default experiments.<name>
    expected_seconds: float = 60.0  # measured run time of the CPU preset (docs/reproduction.md): long stages first
    paper_skip: str = ""

    def load(self):
        return importlib.import_module(self.module or f"experiments.{self.name}")


_CLS_GAP = ("vit_b16", "bit_r50", "gap_vit")
STAGES = (
    Stage("sec4_representation_structure", "4", "Representation structure (Figures 1, 2)",
          PaperStage(("vit_b16", "vit_l16", "bit_r50", "mixer_b16"), optional=("vit_l16", "mixer_b16"),
                     figures=(("1", ("vit_b16", "bit_r50")), ("2", ("vit_b16", "bit_r50")),
                              ("2 (ViT-L/16)", ("vit_l16",)), ("H", ("mixer_b16",))),
                     batch_size=32, min_batches=2, extra=(("--taps", "blocks"),)), expected_seconds=103),
    Stage("sec5_attention_distance", "5", "Attention distances (Figures 3, 4)",
          PaperStage(("augreg_b16_i21k", "augreg_l16_i21k"), optional=("augreg_l16_i21k",),
                     twins=("--little-data-models", ("augreg_b16_i1k", "augreg_l16_i1k")),
                     figures=(("3", ("augreg_b16_i21k",)), ("3 (ViT-L/16)", ("augreg_l16_i21k",)),
                              ("4", ("augreg_b16_i1k", "augreg_l16_i1k"))),
                     batch_size=64, num_examples=5000,
                     source="Section 5: 'we weight the pixel distances by the attention weights ... and average "
                            "over 5000 datapoints'"), expected_seconds=41),
    Stage("sec5_local_global_heads", "5", "Local and global heads vs ResNet (Figure 5)",
          PaperStage(("vit_b16", "bit_r50"), figures=(("5", ("vit_b16", "bit_r50")),), batch_size=32,
                     min_batches=2), expected_seconds=51),
    # 6 of the ViT's blocks and 4 random channels per image and layer: 12 + 4 taps at 5 passes each (one forward,
    # 4 backward) per 32 images, under 30 minutes on a 2-core CPU (docs/reproduction.md).
    Stage("sec5_receptive_fields", "5", "Effective receptive fields (Figure 6)",
          PaperStage(("vit_b16", "bit_r50"), figures=(("6", ("vit_b16", "bit_r50")), ("C", ("vit_b16",))),
                     batch_size=32, num_examples=32, extra=(("--num-blocks", "6"), ("--max-channels", "4")),
                     source="Figure 6: 'Results are averaged across all channels in each map for 32 "
                            "randomly-selected images'"), expected_seconds=64),
    Stage("sec6_skip_connections", "6", "Skip connections (Figures 7, 8)",
          PaperStage(("vit_b16", "bit_r50"), figures=(("7", ("vit_b16", "bit_r50")),), batch_size=32),
          expected_seconds=70),
    Stage("sec7_localization", "7", "Localization (Figures 9, 10)",
          PaperStage(_CLS_GAP, optional=("gap_vit",), figures=(("9", ("vit_b16", "bit_r50")), ("10", ("gap_vit",))),
                     batch_size=32), expected_seconds=36),
    Stage("sec7_linear_probes", "7", "Linear probes (Figure 11)",
          PaperStage(_CLS_GAP, optional=("gap_vit",),
                     figures=(("11", ("vit_b16", "bit_r50")), ("11 (GAP ViT)", ("gap_vit",))), batch_size=64,
                     extra=(("--shots", "10"),),
                     source="Figure 11: 'linear classifiers on 10-shot ImageNet classification' (10 per class)"),
          expected_seconds=54),
    Stage("sec8_data_scale", "8", "Effects of data scale (Figures 12, 13)",
          PaperStage(("augreg_b16_i1k", "augreg_b16_i21k"),
                     figures=(("12", ("augreg_b16_i1k", "augreg_b16_i21k")),
                              ("13", ("augreg_b16_i1k", "augreg_b16_i21k"))),
                     batch_size=32, min_batches=2,
                     extra=(("--fractions", str(IMAGENET1K_FRACTION), "1"),
                            ("--data-names", "ImageNet-1k", "ImageNet-21k"), ("--shots", "10"))),
          expected_seconds=72),
)
PAPER_SKIPPED_FIGURES = (
    ("8", "needs ViTs trained without the skip connections of one block; no such checkpoints are published, so "
          "it runs on the CPU preset's zoo only"),
    ("12-13 on JFT-300M", "JFT-300M and models trained on its fractions are not public; the preset compares the "
                          "ImageNet-1k AugReg ViT-B/16 with its ImageNet-21k twin instead"),
)
PRESETS = ("cpu", "paper")
CONTROL_PREFIX = "init:"  # model specs of the untrained controls (vitcnn_tf.model_specs.init_spec)


UserError = common.UserError


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.reproduce")
    parser.add_argument("--only", default=None,
                        help="comma-separated stages to run (prefixes allowed, e.g. sec5,sec7_loc); default all")
    parser.add_argument("--out", default=os.path.join("results", "reproduce"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help="cpu: the embedded zoo (default); paper: "
                        "the paper's models from --checkpoints")
    parser.add_argument("--dataset", default=None, help="evaluation dataset (default: shapes10; paper: imagenet2012)")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir / image folder root")
    parser.add_argument("--split", default=None,
                        help="evaluation split (default: 'validation' for imagenet2012, else 'test')")
    parser.add_argument("--checkpoints", default=None, help="folder of the published .npz files (--preset paper)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                        help="--preset paper: use SPEC (PRESET[:key=value,...]=file.npz) for checkpoint NAME of the "
                             "table, or add the optional gap_vit (repeatable)")
    parser.add_argument("--num-examples", action="append", default=[], metavar="N|STAGE=N",
                        help="examples of every stage (N) or of one stage (STAGE=N, STAGE a stage name or prefix); "
                             "repeatable; default: the paper's counts (--preset paper) or each stage's default")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="minibatch of every stage (default: the stage's, or one that fits the paper's models "
                             "on a 16 GB GPU with --preset paper); shrunk to fit a smaller --num-examples")
    parser.add_argument("--zoo-dir", default=common.DEFAULT_ZOO_DIR,
                        help="folder of a zoo trained from the recipes (trained there on first use); default: the "
                             "trained zoo shipped with the package")
    parser.add_argument("--retrain-zoo", action="store_true",
                        help=f"train the zoo from its recipes into --zoo-dir (default {_zoo_train_dir()}), "
                             "reusing valid entries there, instead of the shipped weights")
    parser.add_argument("--strategy", choices=common.STRATEGIES, default="none",
                        help="tf.distribute strategy for extraction and CKA accumulation (default: none)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes running zoo trainings and stages at once, one thread each (default: "
                             "one per CPU with --preset cpu and no --strategy, else 1: in this process)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    common.add_debug_argument(parser)
    return parser


def selected_stages(only):
    """The stages named by ``--only`` (comma-separated names or prefixes), in pipeline order; None: all.
    UserError for a name that matches no stage or an empty selection."""
    if only is None:
        return list(STAGES)
    chosen = set()
    names = ", ".join(stage.name for stage in STAGES)
    tokens = [token.strip() for token in only.split(",") if token.strip()]
    if not tokens:
        raise UserError(f"--only {only!r}: expected comma-separated stage names or prefixes; stages are {names}")
    for token in tokens:
        matches = [stage.name for stage in STAGES if stage.name.startswith(token)]
        if not matches:
            raise UserError(f"--only: {token!r} names no stage; stages are {names}")
        chosen.update(matches)
    return [stage for stage in STAGES if stage.name in chosen]


@dataclasses.dataclass
class StagePlan:
    """What the run will do with a stage: ``argv`` its command line (None: skipped, ``reason`` says why),
    ``num_examples`` (None: the stage's default), ``lost`` ``(figure, reason)`` of figures it will not draw and
    ``models`` ``(name, spec)`` of its models (checkpoint names, or zoo recipes)."""

    stage: Stage
    argv: list | None
    num_examples: int | None = None
    reason: str = ""
    lost: tuple = ()
    figures: tuple = ()
    models: tuple = ()
    run: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """The checked inputs of a run: dataset, split, its class count, and for the paper preset ``models``
    ``{checkpoint name: spec}`` (found files only) and ``missing`` ``{name: reason}``."""

    dataset: str
    split: str
    num_classes: int
    models: dict
    missing: dict


def check_inputs(args, stages):
    """Checks the dataset (it exists, has the split, every label is a class index) and, for ``--preset paper``,
    every checkpoint the stages need (present; each array's shape matches the model); returns a :class:`RunSetup`.
    Raises :class:`UserError` (one line per problem, naming the option or the file, key and shapes)."""
    from vitcnn_tf import data as data_lib

    dataset = args.dataset or ("imagenet2012" if args.preset == "paper" else data_lib.DEFAULT_DATASET)
    split = args.split or data_lib.evaluation_split(dataset)
    try:
        info = data_lib.check_split(dataset, split, data_dir=args.data_dir)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(f"--dataset {dataset} --split {split} (--data-dir {args.data_dir}): "
                        f"{common.one_line(error)}") from None
    models, missing = {}, {}
    if args.preset == "paper":
        models, missing = resolve_checkpoints(args)
        if not models:
            where = ("is not a folder" if not os.path.isdir(args.checkpoints) else
                     "holds none of the paper's checkpoint files")
            raise UserError(f"--checkpoints {args.checkpoints}: {where}; expected the published files "
                            f"({', '.join(checkpoint.file for checkpoint in CHECKPOINTS[:2])} and "
                            f"{len(CHECKPOINTS) - 2} more, listed in experiments/reproduce.py) or --model NAME=SPEC")
        needed = {name for stage in stages if stage.paper for name in stage.paper.models}
        problems = []
        for name in sorted(needed & set(models)):
            found = check_checkpoint(models[name])
            problems += found[:3] + ([f"... and {len(found) - 3} more problems in this file"] if len(found) > 3 else [])
        if problems:
            raise UserError("--checkpoints: " + "; ".join(problems))
    return RunSetup(dataset, split, int(info.num_classes), models, missing)


def resolve_checkpoints(args):
    """``({name: model spec}, {name: why it is missing})`` for every checkpoint of ``CHECKPOINTS`` and
    ``OPTIONAL_MODELS``: ``--model NAME=SPEC`` first, else the table's file in ``--checkpoints``."""
    table = {checkpoint.name: checkpoint for checkpoint in CHECKPOINTS}
    given = {}
    for entry in args.model:
        name, separator, spec = entry.partition("=")
        if not separator or not spec:
            raise UserError(f"--model: expected NAME=SPEC, got {entry!r}")
        if name not in table and name not in OPTIONAL_MODELS:
            raise UserError(f"--model: {name!r} is not a checkpoint of the paper preset; names: "
                            f"{', '.join([*table, *OPTIONAL_MODELS])}")
        given[name] = spec
    models, missing = {}, {}
    for name in [*table, *OPTIONAL_MODELS]:
        if name in given:
            path = _spec_file(given[name])
            if path is not None and not os.path.isfile(path):
                raise UserError(f"--model {name}: no file {path!r}")
            models[name] = given[name]
        elif name in table:
            spec = table[name].spec(args.checkpoints)
            if os.path.isfile(_spec_file(spec)):
                models[name] = spec
            else:
                missing[name] = f"{table[name].file} is not in --checkpoints {args.checkpoints} (from {table[name].url})"
        else:
            missing[name] = f"no {name} given: {OPTIONAL_MODELS[name]}"
    return models, missing


def check_checkpoint(spec):
    """Problems (strings naming the file, the key and both shapes) of the ``.npz`` (or timm ``.safetensors``) of
    ``spec`` (``PRESET[:overrides]=file.npz``) against the model it names; [] when it loads. Other specs (zoo recipes,
    ``.keras`` files) are checked when the stage loads them.

    The model is built under ``keras.StatelessScope(initialize_variables=False)``: its variables get shapes but no
    memory, and the file's array headers are read without their data, so a ViT-L/16 costs nothing to check. The
    position embedding may differ in its token count (it is resampled to the model's grid on loading).
    """
    try:
        parsed = model_specs.parse_model_spec(spec)
    except ValueError as error:
        return [str(error)]
    if parsed.kind != "checkpoint":
        return []
    import keras

    from vitcnn_tf.models import registry

    path, preset = parsed.path, parsed.preset
    try:
        family = registry.family_of_preset(preset)
        with keras.StatelessScope(initialize_variables=False):
            model = family.model_class(family.config_class.from_name(preset, **parsed.overrides))
            expected = {key: tuple(variable.shape) for key, variable in model.checkpoint_variables().items()}
    except (ValueError, TypeError) as error:
        return [f"{path}: cannot build the model {spec.rsplit('=', 1)[0]!r}: {error}"]
    if path.endswith(".safetensors"):  # a timm file: its header against the timm table of the model
        from vitcnn_tf.models import timm

        return timm.check_timm(model, path)
    try:
        found = npz_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return [f"{path}: not a readable .npz archive ({error})"]
    problems = [f"{path}: key {key!r} is missing (the model {preset} expects shape {expected[key]})"
                for key in sorted(set(expected) - set(found))]
    problems += [f"{path}: key {key!r} {found[key]} is not in the model {preset}"
                 for key in sorted(set(found) - set(expected))]
    for key in sorted(set(expected) & set(found)):
        want, have = expected[key], found[key]
        resampled = key.endswith("pos_embedding") and len(want) == len(have) == 3 and want[::2] == have[::2]
        if want != have and not resampled:
            problems.append(f"{path}: key {key!r} has shape {have}, the model {preset} expects {want}")
    return problems


def npz_shapes(path):
    """``{key: shape}`` of the arrays of an ``.npz`` file, read from the array headers without their data."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shapes[name[:-4]] = tuple(read_header(handle)[0])
    return shapes


def parse_num_examples(entries, stages):
    """``(count for every stage or None, {stage name: count})`` from ``--num-examples`` entries ``N`` /
    ``STAGE=N`` (STAGE a stage name or unique prefix)."""
    everywhere, per_stage = None, {}
    for entry in entries:
        target, separator, text = entry.rpartition("=")
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise UserError(f"--num-examples: expected a positive integer N or STAGE=N, got {entry!r}")
        if not separator:
            everywhere = count
            continue
        matches = [stage.name for stage in STAGES if stage.name.startswith(target)]
        if len(matches) != 1:
            raise UserError(f"--num-examples: {target!r} must name one stage (a name or unique prefix of "
                            f"{', '.join(stage.name for stage in STAGES)})")
        per_stage[matches[0]] = count
    return everywhere, per_stage


def plan_stages(args, stages, setup):
    """One :class:`StagePlan` per stage: its command line (or why it is skipped), example count and minibatch.
    Each runnable stage's options are checked (:func:`experiments.common.check_options`); UserError names the
    stage and the option."""
    everywhere, per_stage = parse_num_examples(args.num_examples, stages)
    run = {"preset": args.preset, "dataset": setup.dataset, "split": setup.split}
    if args.batch_size is not None and args.batch_size < MIN_BATCH:
        raise UserError(f"--batch-size: expected at least {MIN_BATCH} (unbiased HSIC), got {args.batch_size}")
    plans = []
    for stage in stages:
        paper = stage.paper if args.preset == "paper" else None
        if args.preset == "paper" and paper is None:
            plans.append(StagePlan(stage, None, reason=stage.paper_skip or "no public checkpoints for its models",
                                   run=run))
            continue
        module = stage.load()
        parser = module.build_parser()
        defaults = parser.parse_args([])
        argv = ["--out", os.path.join(args.out, stage.name), "--dataset", setup.dataset, "--split", setup.split]
        if args.zoo_dir is not None:
            argv += ["--zoo-dir", args.zoo_dir]
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        if not args.progress:
            argv.append("--no-progress")
        if args.strategy != "none":
            argv += ["--strategy", args.strategy]
        lost, figures, names = (), (), {}
        if paper is not None:
            absent = [name for name in paper.models if name not in setup.models]
            required = [name for name in absent if name not in paper.optional]
            if required:
                plans.append(StagePlan(stage, None, reason="missing " + "; ".join(
                    f"{name}: {setup.missing[name]}" for name in required), run=run))
                continue
            lost = tuple((figure, f"needs {', '.join(needs)}: " + "; ".join(setup.missing[n] for n in needs
                                                                            if n in absent))
                         for figure, needs in paper.figures if set(needs) & set(absent))
            figures = tuple(figure for figure, needs in paper.figures if not set(needs) & set(absent))
            given = [name for name in paper.models if name in setup.models]
            argv += ["--models", *(setup.models[name] for name in given)]
            names.update((setup.models[name], name) for name in given)
            if paper.twins:
                option, twin_names = paper.twins
                twins = dict(zip(paper.models, twin_names))
                if option in parser._option_string_actions and all(twins[name] in setup.models for name in given):
                    argv += [option, *(setup.models[twins[name]] for name in given)]
                    names.update((setup.models[twins[name]], twins[name]) for name in given)
                else:
                    why = (f"the stage has no {option} option" if option not in parser._option_string_actions
                           else "; ".join(f"{name} has no twin: {setup.missing[twins[name]]}" for name in given
                                          if twins[name] not in setup.models))
                    twin_figures = [(figure, needs) for figure, needs in paper.figures if set(needs) & set(twin_names)]
                    lost += tuple((figure, why) for figure, _ in twin_figures if figure in figures)
                    figures = tuple(figure for figure in figures if figure not in dict(twin_figures))
            for option, *values in paper.extra:
                if option in parser._option_string_actions:
                    argv += [option, *values]
            if "--train-pool" in parser._option_string_actions and "--shots" in parser._option_string_actions:
                argv += ["--train-pool", str(_probe_pool(args, setup, int(dict(
                    (option, values) for option, *values in paper.extra).get("--shots", ["10"])[0])))]
        count = per_stage.get(stage.name, everywhere)
        if count is None and paper is not None:
            count = paper.num_examples
        batch = args.batch_size or (paper.batch_size if paper is not None else None)
        effective_count = count if count is not None else defaults.num_examples
        min_batches = stage.paper.min_batches if stage.paper is not None else 1
        fitted = min(batch or defaults.batch_size, effective_count // min_batches)
        if fitted < MIN_BATCH:
            raise UserError(f"--num-examples: stage {stage.name} needs at least {MIN_BATCH * min_batches} examples "
                            f"({min_batches} minibatch(es) of >= {MIN_BATCH}), got {effective_count}")
        if count is not None:
            argv += ["--num-examples", str(count)]
        if fitted != defaults.batch_size:
            argv += ["--batch-size", str(fitted)]
        options = parser.parse_args(argv)
        try:
            common.check_options(module, options, check_out=False)
        except UserError as error:
            raise UserError(f"stage {stage.name}: {error}") from None
        models = tuple((names.get(spec, spec), spec) for spec in common.model_specs(options))
        plans.append(StagePlan(stage, argv, num_examples=effective_count, lost=lost, figures=figures, models=models,
                               run=run))
    return plans


def plan_text(args, plans, setup):
    """The plan printed before any work: which figures run and which are skipped, and why."""
    workers = "in this process" if args.jobs == 1 else f"in {args.jobs} worker processes"
    lines = [f"preset {args.preset} into {os.path.abspath(args.out)}, {workers}",
             f"dataset {setup.dataset}, split {setup.split}" + (f" in {args.data_dir}" if args.data_dir else "")]
    for plan in plans:
        if plan.argv is None:
            lines.append(f"  skip {plan.stage.name}: {plan.reason}")
            continue
        figures = f" (Figures {', '.join(plan.figures)})" if plan.figures else ""
        lines.append(f"  run  {plan.stage.name}{figures} on {plan.num_examples} examples")
        lines += [f"       without Figure {figure}: {reason}" for figure, reason in plan.lost]
    if args.preset == "paper":
        lines += [f"  Figure {figure} is not run: {reason}" for figure, reason in PAPER_SKIPPED_FIGURES]
    return "\n".join(lines)


def _probe_pool(args, setup, shots):
    """Training examples the few-shot probes draw from: twice ``shots`` per class (ImageNet's smallest training
    class, 732 of 1.28M images, still gets more than ``shots`` of a proportional subset), at most the train split."""
    from vitcnn_tf import data as data_lib

    size = data_lib.split_size(setup.dataset, "train", data_dir=args.data_dir)
    return min(2 * shots * setup.num_classes, size)


def _spec_file(spec):
    """The checkpoint file of a ``PRESET[:overrides]=file.npz`` (or ``=file.safetensors``) spec, else None."""
    head, separator, tail = spec.rpartition("=")
    return tail if separator and tail.endswith((".npz", ".safetensors")) else None


def stage_fingerprint(module, options):
    """sha256 of the stage's options and of the identity of its models and code (:func:`code_files`).

    Options enter in a spelling-free form (:func:`fingerprint_settings`), models by their content
    (:func:`vitcnn_tf.model_specs.model_identity`: weight hashes, zoo recipe fingerprints), so the same folder or
    file named another way (relative, absolute, with a trailing ``/``) gives the same fingerprint."""
    identities = [_model_identity(spec, options.zoo_dir) for spec in common.model_specs(options)]
    parts = {"format": STAGE_FORMAT, "module": module.__name__,
             "options": json.dumps(fingerprint_settings(options), sort_keys=True, default=str),
             "models": identities,
             "code": {os.path.relpath(path, _PROJECT_ROOT): training.sha256_file(path)
                      for path in code_files(module.__name__)}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def fingerprint_settings(options):
    """The options of a stage as they enter its fingerprint: without those of ``_NOT_AFFECTING_RESULTS``, folder
    options absolute and normalised, model specs (``--models``, ``--little-data-models``, ``--seed-replicates``)
    with their files' absolute paths (their content enters by hash)."""
    settings = {key: value for key, value in vars(options).items() if key not in _NOT_AFFECTING_RESULTS}
    for key in _PATH_OPTIONS:
        if settings.get(key) is not None:
            settings[key] = _normal_path(settings[key])
    for key in _SPEC_OPTIONS:
        if settings.get(key) is not None:
            settings[key] = [_normal_spec(spec) for spec in settings[key]]
    if settings.get("seed_replicates") is not None:
        settings["seed_replicates"] = [
            "=".join(map(_normal_spec, entry.split("=", 1))) if "=" in entry else entry
            for entry in settings["seed_replicates"]]
    return settings


def _normal_path(path):
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _normal_spec(spec):
    """``spec`` with its file (``.keras``, checkpoint) as a normalised absolute path."""
    try:
        parsed = model_specs.parse_model_spec(spec)
    except ValueError:
        return spec
    if parsed.path is None:
        return spec
    return spec[: len(spec) - len(parsed.path)] + _normal_path(parsed.path)


def code_files(module_name, packages=("experiments",)):
    """The source files a stage's results depend on, sorted: every file of the ``vitcnn_tf`` package, plus
    ``module_name``'s file and those of the modules of ``packages`` it imports, directly or through each other
    (found by reading their ``import`` statements, so a helper such as ``sec678_common`` counts)."""
    import vitcnn_tf

    files = {os.path.join(folder, name) for folder, _, names in os.walk(os.path.dirname(vitcnn_tf.__file__))
             for name in names if name.endswith(".py")}
    queue, seen = [module_name], set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        files.add(spec.origin)
        with open(spec.origin) as handle:
            tree = ast.parse(handle.read(), spec.origin)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # "from p import m" imports module p.m when there is one, else names of p
                imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in imported:
                if candidate.split(".")[0] in packages and _module_exists(candidate):
                    queue.append(candidate)
    return sorted(files)


def _module_exists(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent is not a package (an attribute import)
        return False


def read_stage_record(stage_dir):
    """``(record, problem)`` of the stage folder ``stage_dir``: its ``stage.json`` record when it is readable, of
    this format, and every output it lists is there with its recorded sha256 (problem ""); else ``(None, why)``
    (``why`` "" when there is no record at all)."""
    path = os.path.join(stage_dir, STAGE_FILE)
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as error:
        return None, f"its record {STAGE_FILE} is unreadable ({error})"
    if not isinstance(record, dict) or record.get("format") != STAGE_FORMAT or not isinstance(
            record.get("files"), dict) or not isinstance(record.get("summary"), dict):
        return None, f"its record {STAGE_FILE} is of an older format"
    problems = atomic_io.changed_files(stage_dir, record["files"])
    if problems:
        name, what = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        text = "is missing" if what == "missing" else "changed since the stage wrote it"
        return None, f"its output {name} {text}{more}"
    return record, ""


# The model objects of the stages run in this process (a worker runs several): a stage gets those of earlier stages
# of the same architectures, with its own weights, so their builds, initial weights and compiled functions are reused.
_STAGE_MODELS = model_specs.ModelPool()


def run_stage(plan):
    """Runs (or reuses) one planned stage; returns ``{stage, status, seconds, summary, note, record, why, error}``.

    ``status``: ``reused`` (its record matches and its outputs are intact), ``ran``, ``failed`` or ``skipped``;
    ``why`` says why a stage with a record runs again; ``error`` (failed) is ``(one-line message, traceback,
    whether it is a user error)``. The stage writes into a fresh folder that replaces ``<out>/<stage>`` once its
    record is written (module docstring)."""
    stage = plan.stage
    if plan.argv is None:
        return {"stage": stage.name, "status": "skipped", "seconds": 0.0, "summary": {"findings": []},
                "note": plan.reason, "record": None, "why": "", "error": None}
    module = stage.load()
    options = module.build_parser().parse_args(plan.argv)
    fingerprint = stage_fingerprint(module, options)
    target = options.out
    record, why = read_stage_record(target)
    if record is not None and record.get("fingerprint") == fingerprint:
        return {"stage": stage.name, "status": "reused", "seconds": record["seconds"], "summary": record["summary"],
                "note": "", "record": record, "why": "", "error": None}
    if record is not None:
        why = "its options, models or code changed"
    options.out = atomic_io.fresh_sibling(target)
    start = time.perf_counter()
    try:
        summary = common.run_experiment(module, options, pool=_STAGE_MODELS)
        seconds = time.perf_counter() - start
        record = {"format": STAGE_FORMAT, "stage": stage.name, "fingerprint": fingerprint, "run": plan.run,
                  "command": _command(module, plan.argv),
                  "num_examples": summary.get("num_examples", plan.num_examples),
                  "models": [{"name": name, "source": _spec_file(spec) or spec,
                              "sha256": _model_sha256(_model_identity(spec, options.zoo_dir))}
                             for name, spec in plan.models],
                  "lost_figures": [list(item) for item in plan.lost], "seconds": round(seconds, 1),
                  "summary": summary, "files": atomic_io.file_hashes(options.out, exclude=(STAGE_FILE,))}
        atomic_io.write_json(os.path.join(options.out, STAGE_FILE), record)  # last: the folder is complete
        atomic_io.replace_folder(options.out, target)
    except Exception as error:  # noqa: BLE001 (one failed stage must not lose the others)
        with contextlib.suppress(OSError):
            shutil.rmtree(options.out)
        message = common.one_line(error) if isinstance(error, UserError) else \
            f"{type(error).__name__}: {common.one_line(error)}"
        return {"stage": stage.name, "status": "failed", "seconds": time.perf_counter() - start,
                "summary": {"findings": []}, "note": message, "record": None, "why": why,
                "error": (message, traceback.format_exc(), isinstance(error, common.USER_ERRORS))}
    return {"stage": stage.name, "status": "ran", "seconds": record["seconds"], "summary": record["summary"],
            "note": "", "record": record, "why": why, "error": None}


def _command(module, argv):
    """The stage's command line without what does not affect its results: ``--out`` (the record's own folder) and
    ``--no-progress``."""
    index = argv.index("--out")
    kept = [item for item in argv[:index] + argv[index + 2:] if item != "--no-progress"]
    return " ".join(["python -m", module.__name__, *kept])


def _model_sha256(identity):
    return identity.get("sha256") or identity.get("weights_sha256") or ""


def run_pipeline(args, plans, progress):
    """Trains the missing zoo models (CPU preset) and runs the planned stages in ``args.jobs`` worker processes,
    each stage as soon as its models are ready; ``progress`` (:class:`PipelineProgress`) is told of every start and
    end. Returns ``(results of run_stage in plan order, {recipe: "trained" | "cached" | "failed"})``."""
    from vitcnn_tf import zoo

    recipes_of = {plan.stage.name: [spec for _, spec in plan.models if spec in zoo.RECIPES]
                  if args.preset == "cpu" and plan.argv else [] for plan in plans}
    needed = list(dict.fromkeys(recipe for recipes in recipes_of.values() for recipe in recipes))
    verbose = "auto" if args.jobs == 1 and args.progress else 0  # progress bars in this process only
    tasks = [zoo.training_task(recipe, args.zoo_dir, data_dir=args.data_dir, verbose=verbose, name=f"zoo/{recipe}")
             for recipe in needed if args.zoo_dir is not None and zoo.cached_record(recipe, args.zoo_dir) is None]
    trainings = {task.name for task in tasks}
    tasks += [parallel.Task(plan.stage.name, run_stage, (plan,),
                            after=tuple(f"zoo/{r}" for r in recipes_of[plan.stage.name] if f"zoo/{r}" in trainings),
                            cost=plan.stage.expected_seconds if plan.argv else 0.0, isolated=False) for plan in plans]
    progress.begin(tasks)
    failures = {}
    try:
        results = parallel.run_tasks(tasks, num_workers=args.jobs, on_start=progress.started,
                                     on_done=progress.done, on_tick=progress.tick)
    except parallel.TasksFailed as failure:
        results, failures = failure.results, failure.failures
        for name, text in failures.items():
            progress.failed(name, text)
    records = [results.get(plan.stage.name) or {
        "stage": plan.stage.name, "status": "failed", "seconds": 0.0, "summary": {"findings": []}, "record": None,
        "note": failure_line(failures.get(plan.stage.name, "its worker process failed")), "why": "",
        "error": None} for plan in plans]
    zoo_status = {recipe: "trained" if f"zoo/{recipe}" in results else
                  "failed" if f"zoo/{recipe}" in trainings else "cached" for recipe in needed}
    return records, zoo_status


def check_shipped_zoo(args, plans):
    """With the shipped zoo (``--zoo-dir`` not given, CPU preset), checks every recipe the planned stages use
    against its record (``vitcnn_tf.zoo.cached_record``); UserError naming the file of the first mismatch."""
    from vitcnn_tf import zoo

    if args.preset != "cpu" or args.zoo_dir is not None:
        return
    needed = dict.fromkeys(spec for plan in plans if plan.argv for _, spec in plan.models if spec in zoo.RECIPES)
    for recipe in needed:
        try:
            zoo.cached_record(recipe, None)
        except zoo.ShippedZooError as error:
            raise UserError(common.one_line(error)) from None


def _zoo_train_dir():
    from vitcnn_tf import zoo

    return zoo.DEFAULT_TRAIN_DIR


def _zoo_record(name, zoo_dir):
    """The zoo record of recipe ``name`` for the report (:func:`vitcnn_tf.zoo.cached_record`); None for a shipped
    recipe that is absent or invalid (a run that uses it stops before any stage, :func:`check_shipped_zoo`)."""
    from vitcnn_tf import zoo

    try:
        return zoo.cached_record(name, zoo_dir)
    except zoo.ShippedZooError:
        return None


def failure_line(text):
    """The last line of a failure text (a traceback's exception line)."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed"


class PipelineProgress:
    """What the terminal shows while the pipeline runs: a line per finished stage or training (and per start when
    the stages run in this process, where their own progress bars follow), each with the tasks done and an estimate
    of the time left; with worker processes on a terminal, one status line redrawn in place as well (a bar over the
    tasks, the time left, every running task with its time so far).

    The estimate: the expected seconds of the tasks not finished (``Task.cost``: a stage's ``expected_seconds``, a
    zoo recipe's :func:`vitcnn_tf.zoo.estimated_seconds`), scaled by how long finished tasks took against their
    expectation, spread over the workers."""

    def __init__(self, workers, live, stream=None, debug=False):
        self.workers, self.live, self.debug = workers, live, debug
        self.stream = stream if stream is not None else sys.stderr
        self.expected, self.running, self.finished, self.actual = {}, {}, set(), {}
        self.start = time.perf_counter()

    def begin(self, tasks):
        self.expected = {task.name: float(task.cost) for task in tasks}
        self.start = time.perf_counter()

    def started(self, task):
        self.running[task.name] = time.perf_counter()
        if self.workers == 1 and self.expected[task.name] > 0:
            self._line(f"{task.name}: started ({self._counts()})")
        self.tick()

    def done(self, task, result):
        began = self.running.pop(task.name, time.perf_counter())
        self.finished.add(task.name)
        if task.name.startswith("zoo/"):
            self.actual[task.name] = time.perf_counter() - began
            self._line(f"{task.name}: trained in {_duration(result['wall_time_seconds'])}, test accuracy "
                       f"{result['test_accuracy']:.3f} ({self._counts()})")
        elif result["status"] == "skipped":
            pass
        elif result["status"] == "reused":
            self._line(f"{task.name}: up to date, reused ({self._counts()})")
        elif result["status"] == "ran":
            self.actual[task.name] = time.perf_counter() - began
            why = f" (rerun: {result['why']})" if result["why"] else ""
            self._line(f"{task.name}: ran in {_duration(result['seconds'])}{why} ({self._counts()})")
        else:
            message, text, user_error = result["error"]
            if self.debug or not user_error:
                self._write(text)
            self._line(f"{task.name}: FAILED: {message}; the other stages go on, a rerun retries this one")
        self.tick()

    def failed(self, name, text):
        if name not in self.finished:
            self.finished.add(name)
            self._line(f"{name}: FAILED: {failure_line(text)}")
            if self.debug and "Traceback" in text:
                self._write(text)

    def tick(self):
        if self.live:
            self.stream.write("\r\033[K" + self._status()[:_terminal_width() - 1])
            self.stream.flush()

    def close(self):
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def seconds_left(self):
        """Estimated seconds until every task has finished."""
        now = time.perf_counter()
        measured = [name for name in self.actual if self.expected.get(name)]
        expected_done = sum(self.expected[name] for name in measured)
        pace = sum(self.actual[name] for name in measured) / expected_done if expected_done else 1.0
        left = sum(cost for name, cost in self.expected.items() if name not in self.finished and
                   name not in self.running)
        left += sum(max(self.expected[name] - (now - began) / pace, 0.0) for name, began in self.running.items())
        return left * pace / self.workers

    def _counts(self):
        total = sum(cost > 0 for cost in self.expected.values())
        done = sum(1 for name in self.finished if self.expected.get(name, 0) > 0)
        left = self.seconds_left()
        return f"{done}/{total} done" + (f", about {_duration(left)} left" if done < total else "")

    def _status(self):
        total = max(sum(cost > 0 for cost in self.expected.values()), 1)
        done = sum(1 for name in self.finished if self.expected.get(name, 0) > 0)
        width = 20
        bar = "#" * (width * done // total) + "-" * (width - width * done // total)
        now = time.perf_counter()
        running = ", ".join(f"{name} {_clock(now - began)}" for name, began in self.running.items()
                            if self.expected.get(name, 0) > 0)
        return (f"[{bar}] {done}/{total}  {_clock(now - self.start)} elapsed, about {_duration(self.seconds_left())} "
                f"left" + (f"  running: {running}" if running else ""))

    def _line(self, text):
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(f"[{_clock(time.perf_counter() - self.start)}] {text}\n")
        self.stream.flush()

    def _write(self, text):
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()


def _clock(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _duration(seconds):
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _terminal_width():
    return shutil.get_terminal_size((100, 24)).columns


def collect_stages(args, plans, results):
    """``[(stage, plan or None, result or None, record or None)]`` for every stage of ``STAGES`` in pipeline order:
    this run's plan and result, and the stage record the report uses (this run's, or a valid record of an earlier
    run in ``args.out`` with this run's preset, dataset and split). Also returns the names of stages whose records
    were left out, with why."""
    by_name = {plan.stage.name: (plan, result) for plan, result in zip(plans, results)}
    run = plans[0].run if plans else {}
    rows, left_out = [], []
    for stage in STAGES:
        plan, result = by_name.get(stage.name, (None, None))
        record = result.get("record") if result else None
        if plan is None:
            record, _ = read_stage_record(os.path.join(args.out, stage.name))
            if record is not None and record.get("run") != run:
                left_out.append((stage.name, "its record is for " + ", ".join(
                    f"{key} {value}" for key, value in sorted((record.get("run") or {}).items()))))
                record = None
        rows.append((stage, plan, result, record))
    return rows, left_out


def build_report(args, setup, rows, seconds):
    """The :class:`vitcnn_tf.report.Report` of the output folder from :func:`collect_stages` rows: every stage with
    a record (this run's or an earlier one's), this run's failed and skipped stages, and the stages without a
    record ("not run")."""
    from vitcnn_tf import zoo

    stages, models, skipped = [], {}, []
    for stage, plan, result, record in rows:
        if record is not None:
            status, note, summary = "ran", "", record["summary"]
            found_seconds, count = record["seconds"], record.get("num_examples")
            skipped += [tuple(item) for item in record.get("lost_figures", [])]
            for model in record.get("models", []):
                if not model["name"].startswith(CONTROL_PREFIX):  # the untrained controls have no weights file
                    models.setdefault(model["name"], model)
        elif result is not None:
            status, note, summary, found_seconds, count = result["status"], result["note"], {}, result["seconds"], None
            skipped += list(plan.lost)
        else:
            status, note, summary, found_seconds, count = (
                "not run", f"no valid record in this folder; python -m experiments.reproduce --only {stage.name} "
                           "runs it", {}, 0.0, None)
        stages.append(report_lib.StageRecord(
            name=stage.name, section=stage.section, title=stage.title, status=status, seconds=found_seconds,
            note=note, findings=tuple(findings_lib.Finding.from_dict(item) for item in summary.get("findings", [])),
            figures=_stage_figures(args.out, stage.name, summary) if record is not None else (),
            num_examples=count))
    if args.preset == "paper":
        model_rows = tuple(report_lib.ModelRecord(name, model["source"], sha256=model["sha256"])
                           for name, model in models.items())
    else:
        model_rows = []
        for name, model in models.items():
            cached = _zoo_record(name, args.zoo_dir) if name in zoo.RECIPES else None
            same = cached is not None and cached.get("weights_sha256") == model["sha256"]
            init = name.startswith(model_specs.INIT_PREFIX)
            model_rows.append(report_lib.ModelRecord(
                name, f"initialisation of {name[len(model_specs.INIT_PREFIX):]}" if init else f"zoo recipe {name}",
                sha256=model["sha256"], status="untrained" if init else "trained",
                accuracy=cached["test_accuracy"] if same else None,
                train_seconds=cached["wall_time_seconds"] if same else None))
        model_rows = tuple(model_rows)
    if args.preset == "paper":
        skipped += list(PAPER_SKIPPED_FIGURES)
    run = report_lib.RunInfo(preset=args.preset, dataset=setup.dataset, split=setup.split, hardware=hardware(),
                             seconds=seconds, skipped_figures=tuple(dict.fromkeys(skipped)))
    return report_lib.Report(run=run, stages=tuple(stages), models=model_rows)


def write_report(out, report):
    """Writes ``findings.json``, ``report.md`` and ``report.html`` (figures embedded) into ``out``."""
    atomic_io.write_json(os.path.join(out, "findings.json"), [finding.to_dict() for finding in report.findings])
    with atomic_io.atomic_open(os.path.join(out, "report.md"), "w") as handle:
        handle.write(report_lib.render_markdown(report))
    with atomic_io.atomic_open(os.path.join(out, "report.html"), "w") as handle:
        handle.write(report_lib.render_html(report, out))


def hardware():
    """``"<CPU model>, <n> CPUs"`` plus the GPUs TensorFlow sees."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs"
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return text + (f"; GPUs: {', '.join(gpus)}" if gpus else "; no GPU")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        with common.user_errors(parser, args.debug):
            _check_arguments(args)
            common.check_writable_folder("--out", args.out)
            stack.enter_context(_output_lock(args.out))
            removed = atomic_io.remove_stale(args.out)
            stages = selected_stages(args.only)
            setup = check_inputs(args, stages)
            plans = plan_stages(args, stages, setup)
            check_shipped_zoo(args, plans)
        print(plan_text(args, plans, setup), flush=True)
        if removed:
            print(f"removed {len(removed)} temporary file(s) or folder(s) left by an interrupted run", flush=True)
        start = time.perf_counter()
        progress = PipelineProgress(args.jobs, live=args.progress and args.jobs > 1 and sys.stderr.isatty(),
                                    debug=args.debug)
        try:
            results, zoo_status = run_pipeline(args, plans, progress)
        finally:
            progress.close()
        rows, left_out = collect_stages(args, plans, results)
        with common.user_errors(parser, args.debug):
            report = build_report(args, setup, rows, time.perf_counter() - start)
            write_report(args.out, report)
    print(run_summary(rows, left_out, zoo_status, report, time.perf_counter() - start, args.out))
    return 1 if any(result["status"] == "failed" for result in results) else 0


def _check_arguments(args):
    if args.jobs is None:
        args.jobs = default_jobs(args.preset, args.strategy)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected at least 1")
    if args.jobs > 1:
        args.progress = False  # the stages' own progress bars only in this process
    if args.retrain_zoo and args.zoo_dir is None:
        args.zoo_dir = _zoo_train_dir()
    if args.preset == "paper" and not args.checkpoints:
        raise UserError("--checkpoints: --preset paper needs --checkpoints DIR with the published .npz files")
    if args.preset == "cpu" and args.model:
        raise UserError("--model: it replaces checkpoints of --preset paper; the CPU preset uses the zoo")
    if args.batch_size is not None and args.batch_size < MIN_BATCH:
        raise UserError(f"--batch-size: expected at least {MIN_BATCH} (unbiased HSIC), got {args.batch_size}")
    parse_num_examples(args.num_examples, STAGES)


@contextlib.contextmanager
def _output_lock(out):
    try:
        with atomic_io.folder_lock(out):
            yield
    except atomic_io.FolderLocked as error:
        raise UserError(f"--out {out}: another reproduce run (pid {error.holder or 'unknown'}) is writing there; "
                        "wait for it to finish or give another --out") from None


def run_summary(rows, left_out, zoo_status, report, seconds, out):
    """The one-screen summary printed at the end: each stage of this run with its status (ran, cached, failed,
    skipped) and time, the stages the report keeps from earlier runs, the zoo trainings, the verdict counts with
    every finding, and where the report is."""
    label = {"ran": "ran", "reused": "cached", "failed": "FAILED", "skipped": "skipped"}
    lines = ["", f"{'stage':<32} {'status':<8} {'time':>8}"]
    kept = []
    for stage, plan, result, record in rows:
        if result is None:
            if record is not None:
                kept.append(stage.name)
            continue
        took = _duration(result["seconds"]) if result["status"] in ("ran", "failed") else \
            f"({_duration(result['seconds'])})" if result["status"] == "reused" else ""
        note = f"  {result['note']}" if result["status"] in ("failed", "skipped") and result["note"] else ""
        lines.append(f"{stage.name:<32} {label[result['status']]:<8} {took:>8}{note}"[:160])
    if kept:
        lines.append(f"kept from earlier runs: {', '.join(kept)}")
    lines += [f"left out of the report: {name} ({why})" for name, why in left_out]
    trained = [recipe for recipe, status in zoo_status.items() if status == "trained"]
    failed = [recipe for recipe, status in zoo_status.items() if status == "failed"]
    if zoo_status:
        lines.append(f"zoo: {len(trained)} trained{' (' + ', '.join(trained) + ')' if trained else ''}, "
                     f"{len(zoo_status) - len(trained) - len(failed)} cached"
                     + (f", FAILED: {', '.join(failed)}" if failed else ""))
    counts = report.verdict_counts()
    lines.append("")
    lines += [f"  {f.verdict:<14} {f.key}: {f.value:.3g} [{f.low:.3g}, {f.high:.3g}]" for f in report.findings]
    lines.append(f"findings: {counts[findings_lib.HOLDS]} hold, {counts[findings_lib.DOES_NOT_HOLD]} do not hold, "
                 f"{counts[findings_lib.INCONCLUSIVE]} inconclusive; this run took {_duration(seconds)}")
    lines.append(f"report: {os.path.join(os.path.abspath(out), 'report.html')} (and report.md, findings.json)")
    return "\n".join(lines)


def _stage_figures(out, stage_name, summary):
    """The stage's figures: its summary's ``figures`` descriptions (files that exist), else its PNG files
    (captioned with their file names)."""
    folder = os.path.join(out, stage_name)
    described = [report_lib.FigureRecord.from_dict(stage_name, item) for item in summary.get("figures", [])]
    described = [figure for figure in described if os.path.isfile(os.path.join(out, figure.path))]
    if described:
        return tuple(described)
    names = sorted(name for name in os.listdir(folder) if name.endswith(".png")) if os.path.isdir(folder) else []
    return tuple(report_lib.FigureRecord(f"{stage_name}/{name}") for name in names)


def _model_identity(spec, zoo_dir):
    """:func:`vitcnn_tf.model_specs.model_identity`, with each file hashed once per run (a checkpoint feeds several
    stages)."""
    parsed = model_specs.parse_model_spec(spec)
    if parsed.path is None:
        return model_specs.model_identity(spec, zoo_dir)
    return _cached_file_identity(spec, zoo_dir, *_file_key(parsed.path))


@functools.lru_cache(maxsize=None)
def _cached_file_identity(spec, zoo_dir, path, size, mtime):
    return model_specs.model_identity(spec, zoo_dir)


def _file_key(path):
    status = os.stat(path)
    return os.path.abspath(path), status.st_size, status.st_mtime_ns


if __name__ == "__main__":
    runtime.exit_without_teardown(main())  # every output is written by then
