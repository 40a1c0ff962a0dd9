"""Shared by ``heatmap_bench``, ``memory_bench`` and ``precision_bench``: the CPU zoo pair (ViT + ResNet) and the
taps of its CKA heatmap, shapes10 minibatches, a per-batch clock and the process's memory.

Not a benchmark itself; the benchmark scripts import it from their own folder (``python benchmarks/<file>.py``).
"""

import os
import resource
import time

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from vitcnn_tf import representations  # noqa: E402
from vitcnn_tf.data import load_dataset, split_size  # noqa: E402
from vitcnn_tf.models import get_model  # noqa: E402
from vitcnn_tf.paper import common as paper_common  # noqa: E402
from vitcnn_tf.paper import representation_structure  # noqa: E402

DEFAULT_ZOO_DIR = os.path.join("results", "zoo")
# zoo recipe name -> registry preset of the pair; "--tiny" shrinks both for tests.
PAIR = {"vit": "ViT-CPU/4", "resnet": "ResNetV2-CPU"}
TINY_IMAGE_SIZE = 16
TINY_VIT_BLOCKS = 1


def add_model_arguments(parser):
    """Adds ``--zoo-dir``, ``--untrained`` and ``--tiny`` (the options of :func:`cpu_pair`)."""
    parser.add_argument("--zoo-dir", default=DEFAULT_ZOO_DIR,
                        help="trained CPU zoo; its 'vit' and 'resnet' models are used when both "
                             "<zoo-dir>/<name>/record.json exist, untrained ones otherwise (default: %(default)s)")
    parser.add_argument("--untrained", action="store_true",
                        help="freshly initialised models even if the zoo has trained ones")
    parser.add_argument("--tiny", action="store_true",
                        help=f"shrunk models for smoke tests: {TINY_IMAGE_SIZE}x{TINY_IMAGE_SIZE} input, ViT with "
                             f"{TINY_VIT_BLOCKS} block (implies --untrained)")


def cpu_pair(options):
    """``({"vit": model, "resnet": model}, description)`` for the options of :func:`add_model_arguments`.

    Trained zoo models when ``<zoo_dir>/vit/record.json`` and ``<zoo_dir>/resnet/record.json`` exist (a stale
    cache entry is an error, never a silent retrain); otherwise untrained models of the ``ViT-CPU/4`` and
    ``ResNetV2-CPU`` presets (timing and memory do not depend on the weights), seeded for reproducibility.
    """
    untrained = options.untrained or options.tiny
    records = [os.path.join(options.zoo_dir, name, "record.json") for name in PAIR]
    if not untrained and all(os.path.exists(path) for path in records):
        from vitcnn_tf import zoo

        models = {}
        for name in PAIR:
            if zoo.cached_record(name, options.zoo_dir) is None:
                raise ValueError(f"--zoo-dir={options.zoo_dir!r}: the cached {name!r} model is stale or corrupted "
                                 f"(see the log); retrain it with 'python -m experiments.train' or pass --untrained")
            models[name] = zoo.load_or_train(name, options.zoo_dir, verbose=0).model
        return models, f"trained zoo models from {options.zoo_dir}"
    keras.utils.set_random_seed(0)
    models = {}
    for name, preset in PAIR.items():
        overrides = {}
        if options.tiny:
            overrides["image_size"] = TINY_IMAGE_SIZE
            if name == "vit":
                overrides["num_layers"] = TINY_VIT_BLOCKS
        models[name] = get_model(preset, **overrides)
    why = "--tiny" if options.tiny else ("--untrained" if options.untrained else f"no trained zoo in {options.zoo_dir}")
    return models, f"untrained {'tiny ' if options.tiny else ''}models ({why})"


def heatmap_taps(model):
    """Tap names of ``model`` in the heatmap, in forward order: those of
    ``vitcnn_tf.paper.representation_structure.kept_taps`` with its defaults (every tap but the attention
    probabilities ``*/attn`` and the ``logits``)."""
    return representation_structure.kept_taps(model)


image_size = paper_common.image_size  # side S of a model's square input [n, S, S, C]


def describe_pair(models, taps):
    """One line per model: preset, taps kept of all taps."""
    return "; ".join(f"{name} {PAIR[name]}: {len(taps[name])} of {len(representations.layer_names(model))} taps"
                     for name, model in models.items())


def shapes10_batches(split, num_examples, batch_size, size):
    """Full minibatches ``(images [batch_size, size, size, 3], labels)`` of a stratified ``num_examples`` subset of
    the shapes10 ``split`` (the whole split if it has no more), in stored order."""
    if num_examples < batch_size:
        raise ValueError(f"num_examples={num_examples} is smaller than batch_size={batch_size}: no full minibatch")
    subset = dict(num_examples=num_examples) if num_examples < split_size("shapes10", split) else {}
    return load_dataset("shapes10", split, batch_size=batch_size, image_size=size, shuffle=False,
                        drop_remainder=True, **subset)


class BatchClock:
    """Iterates ``dataset`` (batches or tuples whose first element is the images) and records, for each batch, the
    wall and CPU clocks when it was handed out and its number of examples; ``stop()`` marks the end of the work on
    the last batch. Batch ``b``'s work (its fetch included) lasts from stamp ``b`` to stamp ``b + 1``.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.stamps, self.sizes, self.end = [], [], None

    def __iter__(self):
        self.stamps, self.sizes, self.end = [], [], None
        start = clocks()
        for batch in self.dataset:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.stamps.append(start)
            self.sizes.append(int(images.shape[0]))
            yield batch
            start = clocks()

    def stop(self):
        self.end = clocks()

    def durations(self):
        """Seconds of work per batch ``[num_batches, 2]``: wall clock, CPU time of the process (all threads)."""
        if self.end is None or not self.stamps:
            raise RuntimeError("BatchClock: iterate the dataset and call stop() first")
        return np.diff(np.array(self.stamps + [self.end]), axis=0)


def clocks():
    """``(wall clock, CPU time of this process over all its threads)`` in seconds. CPU time is less sensitive to
    other processes competing for the cores than wall time (not immune: caches and memory bandwidth are shared)."""
    return time.perf_counter(), time.process_time()


def per_thousand(seconds, examples):
    """Seconds per 1,000 examples."""
    return 1000.0 * seconds / examples


def steady_and_first(durations, sizes):
    """``(seconds per 1,000 examples after the first batch, first batch's seconds)`` from per-batch ``durations``
    ``[B]`` (or ``[B, k]`` for k clocks: then both are ``[k]``); the first batch pays the tracing of compiled
    functions. With a single batch the steady rate is that batch's."""
    durations, sizes = np.asarray(durations, dtype=float), np.asarray(sizes)
    if len(durations) == 1:
        return per_thousand(durations[0], sizes[0]), durations[0]
    return per_thousand(durations[1:].sum(axis=0), sizes[1:].sum()), durations[0]


def peak_rss_mb():
    """Peak resident set size of this process so far, in MB (``ru_maxrss`` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    """Current resident set size of this process in MB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
