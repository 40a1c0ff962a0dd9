r"""Benchmark: precision of the streamed CKA heatmap over 100 minibatches, float32 vs float64 activations, against an
independent float64 computation.

ViT + ResNet activations (``ViT-CPU/4`` and ``ResNetV2-CPU``, trained zoo models if ``--zoo-dir`` holds them) are
computed side by side on the same shapes10 minibatches (the test split, or the train split when the test split is
too small), once per minibatch in float32, and fed to

  (a) ``MinibatchCKA`` as they are (float32 input: Gram matrices of the centred features in float32, U-centring and
      accumulation in float64);
  (b) ``MinibatchCKA`` cast to float64 (the same values; everything in float64);
  (c) ``vitcnn_tf.metrics.reference.minibatch_cka`` on all minibatches at the end (NumPy, float64, per layer pair:
      the independent truth; it holds every activation of every minibatch, hence the modest default tap set).

It prints the max and mean absolute error of (a) and (b) against (c) over the whole ``[L, L]`` heatmap (within- and
cross-model entries), their ratio, where (a)'s largest error is, and the time of each.

    python benchmarks/precision_bench.py                 # 100 minibatches of 32, block outputs of both models
    python benchmarks/precision_bench.py --quick         # 10 minibatches of 16
    python benchmarks/precision_bench.py --taps 'block\d+/\+mlp|.*/\+res'   # the block outputs only

(``--taps all``, every heatmap tap, keeps about 3.4 MB of float32 activations per example, plus twice that in
float64 inside the reference: use few, small minibatches.)
"""

import argparse
import re
import sys
import time

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _common  # noqa: E402
from vitcnn_tf import representations  # noqa: E402
from vitcnn_tf.data import split_size  # noqa: E402
from vitcnn_tf.metrics import reference  # noqa: E402
from vitcnn_tf.metrics.cka import MinibatchCKA  # noqa: E402

# Block outputs of both models plus their first and last representations; the largest ResNet taps (stage 1 and 2,
# 32x32 and 16x16 maps) are left out to keep the reference's copy of every activation small.
DEFAULT_TAPS = r"embedding|block\d+/\+mlp|pre_logits|block[34]/unit\d+/\+res|pre_head_norm"
QUICK = dict(batches=10, batch_size=16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100, help="minibatches (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per minibatch (default 32)")
    parser.add_argument("--taps", default=DEFAULT_TAPS,
                        help="regular expression of the taps compared (whole names, both models), or 'all' for "
                             "every heatmap tap (all but */attn and logits) (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['batches']} minibatches of {QUICK['batch_size']} (overrides both)")
    _common.add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.batch_size = QUICK["batches"], QUICK["batch_size"]
    largest = split_size("shapes10", "train")
    if args.batch_size < 4 or args.batches < 1 or args.batches * args.batch_size > largest:
        parser.error(f"need batch-size >= 4 (unbiased HSIC), batches >= 1 and batches x batch-size <= {largest} "
                     f"(the shapes10 train split)")
    return args


def selected_taps(models, pattern):
    """{model name -> its taps compared}: its heatmap taps whose whole name matches ``pattern`` ('all': every one)."""
    taps = {}
    for name, model in models.items():
        kept = _common.heatmap_taps(model)
        taps[name] = kept if pattern == "all" else [tap for tap in kept if re.fullmatch(pattern, tap)]
        if not taps[name]:
            raise ValueError(f"--taps={pattern!r} matches no heatmap tap of {name!r}; its taps are {kept}")
    return taps


def main(argv=None):
    args = parse_args(argv)
    models, origin = _common.cpu_pair(args)
    taps = selected_taps(models, args.taps)
    joint = representations.joint_tap_model(models, taps)
    names = list(joint.taps)
    num_examples = args.batches * args.batch_size
    split = "test" if num_examples <= split_size("shapes10", "test") else "train"
    dataset = _common.shapes10_batches(split, num_examples, args.batch_size, _common.image_size(joint))
    tap_model = representations.tap_model(joint, names)
    extract = tf.function(lambda images: tap_model(images, training=False), autograph=False)
    print(f"{len(names)} taps ({origin}): {', '.join(names)}")

    metric32, metric64 = MinibatchCKA(len(names)), MinibatchCKA(len(names))
    update_seconds = {"float32": [], "float64": []}  # per minibatch; the first one includes tracing
    kept = []  # every minibatch's float32 activations, for the reference
    for images, _ in dataset:
        activations = extract(images)
        start = time.perf_counter()
        metric32.update_state(activations)
        middle = time.perf_counter()
        metric64.update_state([tf.cast(x, tf.float64) for x in activations])
        update_seconds["float64"].append(time.perf_counter() - middle)
        update_seconds["float32"].append(middle - start)
        kept.append([np.asarray(x) for x in activations])
    features = sum(int(np.prod(x.shape[1:])) for x in kept[0])
    print(f"{len(kept)} minibatches of {args.batch_size} shapes10 {split} examples ({len(kept) * args.batch_size:,}); "
          f"{features:,} features per example, {sum(x.nbytes for x in kept[0]) * len(kept) / 2**20:,.0f} MB of "
          f"float32 activations kept for the reference")
    heatmap32, heatmap64 = np.asarray(metric32.result()), np.asarray(metric64.result())
    start = time.perf_counter()
    truth = reference.minibatch_cka(kept)
    reference_seconds = time.perf_counter() - start
    # Per-minibatch update time in the steady state (first update, which traces, excluded when there are others).
    seconds = {kind: float(np.mean(times[1:] if len(times) > 1 else times)) for kind, times in update_seconds.items()}

    error32, error64 = np.abs(heatmap32 - truth), np.abs(heatmap64 - truth)
    print(f"heatmap [{len(names)}, {len(names)}] against (c) reference.minibatch_cka (NumPy float64, "
          f"{reference_seconds:.1f} s, {1000 * reference_seconds / len(kept):.0f} ms per minibatch):")
    print(f"  (a) MinibatchCKA, float32 activations   max |error| {np.nanmax(error32):.2e}   mean |error| "
          f"{np.nanmean(error32):.2e}   {1000 * seconds['float32']:6.1f} ms per update")
    print(f"  (b) MinibatchCKA, float64 activations   max |error| {np.nanmax(error64):.2e}   mean |error| "
          f"{np.nanmean(error64):.2e}   {1000 * seconds['float64']:6.1f} ms per update")
    ratio = np.nanmax(error32) / np.nanmax(error64) if np.nanmax(error64) > 0 else np.inf
    print(f"ratio of max errors float32 / float64 input: {ratio:.1e}; update time float64 / float32 input "
          f"{seconds['float64'] / seconds['float32']:.2f}x; reference / float32 update time per minibatch "
          f"{reference_seconds / len(kept) / seconds['float32']:.1f}x")
    row, col = np.unravel_index(np.nanargmax(error32), error32.shape)
    print(f"largest float32-input error at ({names[row]}, {names[col]}): reference CKA {truth[row, col]:.10f}, "
          f"float32 input {heatmap32[row, col]:.10f}")
    non_finite = int((~np.isfinite(truth)).sum())
    if non_finite:
        print(f"warning: {non_finite} reference entries are not finite (degenerate layers) and were skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
