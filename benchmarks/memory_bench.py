"""Benchmark: peak memory of the ViT + ResNet CKA heatmap over 2,000 vs 20,000 examples (streaming: must be flat),
against the naive approach that keeps every activation and computes full-data CKA at once.

Each measurement runs in a fresh Python process (this script re-run with ``--child``), so that peaks do not mix;
the child reports its own peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``: TensorFlow's buffers are
not seen by ``tracemalloc``) and its RSS just before the data starts flowing (after imports and model building),
so the growth due to the computation itself is shown too.

  streaming   the Section 4 heatmap: every tap of ``ViT-CPU/4`` and ``ResNetV2-CPU`` but ``*/attn`` and
              ``logits``, both models side by side (``representations.joint_tap_model``) streamed into one
              ``MinibatchCKA`` by ``representations.accumulate_cka``; run over ``--small`` and ``--large`` examples.
  naive       a few block outputs per model (``--naive-taps``: residual sums ``blockNN/+mlp`` / ``*/+res`` at evenly
              spaced depths), all their activations kept (``representations.extract`` per minibatch, concatenated),
              then full-data float64 Gram matrices and unbiased CKA between all of them at once
              (``vitcnn_tf.metrics.reference``); run over ``--naive-examples`` (a size that fits in memory). Its
              memory grows like examples x features (activations) plus layers x examples^2 (Gram matrices).

Images are random (stateless, seeded, generated per minibatch: no dataset held in memory) unless
``--data shapes10``, which uses the shapes10 train split (sizes up to its number of examples; the split's arrays are
held in memory by the input pipeline, so a part of the large run's memory is data, not the heatmap).

    python benchmarks/memory_bench.py                    # 2,000 vs 20,000 streamed, naive over 2,000
    python benchmarks/memory_bench.py --quick            # 1,000 vs 5,000 streamed, naive over 1,000
    python benchmarks/memory_bench.py --data shapes10 --large 10000 --naive-examples 1000 2000
"""

import argparse
import json
import os
import subprocess
import sys
import time

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _common  # noqa: E402
from vitcnn_tf.data import split_size  # noqa: E402

QUICK = dict(small=1000, large=5000, naive_examples=[1000])
BLOCK_OUTPUTS = r"block\d+/\+mlp|.*/\+res"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2000, help="examples of the small streamed run (default 2000)")
    parser.add_argument("--large", type=int, default=20000, help="examples of the large streamed run (default 20000)")
    parser.add_argument("--naive-examples", type=int, nargs="+", default=[2000],
                        help="examples of the naive run(s) (default 2000)")
    parser.add_argument("--naive-taps", type=int, default=3, help="block outputs per model kept by the naive "
                                                                   "approach (default 3)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="examples per minibatch (default 100: every default size is a whole number of them)")
    parser.add_argument("--data", choices=("random", "shapes10"), default="random",
                        help="random images (default) or the shapes10 train split")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['small']} vs {QUICK['large']} examples streamed, naive over "
                             f"{QUICK['naive_examples'][0]} (overrides --small, --large, --naive-examples)")
    parser.add_argument("--child", choices=("streaming", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--num-examples", type=int, help=argparse.SUPPRESS)
    _common.add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large, args.naive_examples = QUICK["small"], QUICK["large"], QUICK["naive_examples"]
    sizes = [args.small, args.large, *args.naive_examples]
    if args.batch_size < 4 or min(sizes) < args.batch_size or args.naive_taps < 1:
        parser.error("need batch-size >= 4 (unbiased HSIC), every size >= batch-size and naive-taps >= 1")
    available = split_size("shapes10", "train")
    if args.data == "shapes10" and max(sizes) > available:
        parser.error(f"--data shapes10: the train split has {available} examples; use smaller sizes or --data random")
    return args


# --- child processes ---------------------------------------------------------------------------------------------


def image_batches(args, num_examples, size):
    """Full minibatches of ``args.data`` images ``[batch, size, size, 3]`` in [-1, 1], ``num_examples // batch``."""
    if args.data == "shapes10":
        return _common.shapes10_batches("train", num_examples, args.batch_size, size)

    def random_images(indices):
        seed = tf.stack([tf.constant(0, tf.int64), indices[0]])
        return tf.random.stateless_uniform([tf.shape(indices)[0], size, size, 3], seed, minval=-1.0, maxval=1.0)

    return tf.data.Dataset.range(num_examples).batch(args.batch_size, drop_remainder=True).map(random_images)


def evenly_spaced(names, count):
    """``count`` names of ``names`` at evenly spaced positions (first and last included)."""
    if count >= len(names):
        return list(names)
    return [names[int(round(i))] for i in np.linspace(0, len(names) - 1, count)]


def child_streaming(args):
    """The streamed heatmap over ``args.num_examples`` -> measurements (dict)."""
    from vitcnn_tf import representations

    models, origin = _common.cpu_pair(args)
    taps = {name: _common.heatmap_taps(model) for name, model in models.items()}
    joint = representations.joint_tap_model(models, taps)
    dataset = image_batches(args, args.num_examples, _common.image_size(joint))
    start_rss = _common.current_rss_mb()
    start = time.perf_counter()
    metric, names, _ = representations.accumulate_cka(joint, dataset, progress=False)
    heatmap = np.asarray(metric.result())
    return dict(examples=int(metric.num_batches.numpy()) * args.batch_size, taps=len(names), origin=origin,
                describe=_common.describe_pair(models, taps), start_rss_mb=start_rss,
                peak_rss_mb=_common.peak_rss_mb(), seconds=time.perf_counter() - start,
                finite_entries=int(np.isfinite(heatmap).sum()), entries=int(heatmap.size))


def child_naive(args):
    """All activations of a few block outputs kept, then full-data CKA at once -> measurements (dict)."""
    from vitcnn_tf import representations
    from vitcnn_tf.metrics import reference

    models, origin = _common.cpu_pair(args)
    chosen = {name: evenly_spaced(representations.select_layers(model, BLOCK_OUTPUTS), args.naive_taps)
              for name, model in models.items()}
    dataset = image_batches(args, args.num_examples, _common.image_size(models["vit"]))
    start_rss = _common.current_rss_mb()
    start = time.perf_counter()
    kept = {f"{name}:{tap}": [] for name, names in chosen.items() for tap in names}
    tap_names = list(kept)
    for images in dataset:
        for name, model in models.items():
            for tap, value in representations.extract(model, images, chosen[name]).items():
                kept[f"{name}:{tap}"].append(value)
    activations = [np.concatenate(parts) for parts in kept.values()]
    del kept
    grams = [reference.gram_linear(x) for x in activations]
    heatmap = np.array([[reference.cka(k, l, unbiased=True) for l in grams] for k in grams])  # noqa: E741
    features = [int(np.prod(x.shape[1:])) for x in activations]
    return dict(examples=int(activations[0].shape[0]), taps=len(activations), origin=origin,
                tap_names=tap_names, features=features,
                start_rss_mb=start_rss, peak_rss_mb=_common.peak_rss_mb(), seconds=time.perf_counter() - start,
                finite_entries=int(np.isfinite(heatmap).sum()), entries=int(heatmap.size))


# --- parent ------------------------------------------------------------------------------------------------------


def run_child(kind, num_examples, args):
    """Runs this script with ``--child kind`` in a fresh process; returns its measurements (dict)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--num-examples", str(num_examples),
               "--batch-size", str(args.batch_size), "--data", args.data, "--naive-taps", str(args.naive_taps),
               "--zoo-dir", args.zoo_dir]
    command += ["--untrained"] * args.untrained + ["--tiny"] * args.tiny
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"memory_bench: the {kind} run over {num_examples} examples failed "
                           f"(exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def growth(result):
    """MB of peak RSS above the RSS when the data started flowing."""
    return result["peak_rss_mb"] - result["start_rss_mb"]


def ratio(numerator, denominator):
    """``numerator / denominator`` formatted as ``1.23x``, or ``n/a`` when the denominator is not positive."""
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def naive_bytes(features, num_examples):
    """(float32 activation bytes, float64 Gram bytes) the naive approach holds for ``num_examples``."""
    return 4 * num_examples * sum(features), 8 * len(features) * num_examples**2


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run = child_streaming if args.child == "streaming" else child_naive
        print(json.dumps(run(args)))
        return 0
    print(f"each run in a fresh process; {args.data} images, minibatches of {args.batch_size}", flush=True)
    runs = []
    for kind, sizes in (("streaming", [args.small, args.large]), ("naive", args.naive_examples)):
        for size in sizes:
            result = run_child(kind, size, args)
            result["kind"] = kind
            runs.append(result)
            print(f"  {kind} over {result['examples']} examples done in {result['seconds']:.1f} s", flush=True)
    small, large = runs[0], runs[1]
    naive = runs[2:]
    origins = sorted({result["origin"] for result in runs})
    print(f"streaming heatmap: {small['describe']}, {small['taps']} taps; {' / '.join(origins)}")
    print(f"naive: {naive[0]['taps']} taps kept in full: {', '.join(naive[0]['tap_names'])} "
          f"({sum(naive[0]['features'])} features per example)")
    print(f"  {'run':<34} {'examples':>9} {'peak RSS':>10} {'RSS at start':>13} {'growth':>9} {'seconds':>8}")
    for result in runs:
        label = ("streaming heatmap (accumulate_cka)" if result["kind"] == "streaming"
                 else "naive: keep activations, full CKA")
        print(f"  {label:<34} {result['examples']:>9,} {result['peak_rss_mb']:>7,.0f} MB "
              f"{result['start_rss_mb']:>10,.0f} MB {growth(result):>6,.0f} MB {result['seconds']:>8.1f}")
        if result["finite_entries"] != result["entries"]:
            print(f"    warning: {result['entries'] - result['finite_entries']} of {result['entries']} CKA entries "
                  f"are not finite")

    print(f"streaming, {large['examples']:,} vs {small['examples']:,} examples "
          f"({large['examples'] / small['examples']:.0f}x the data): peak RSS ratio "
          f"{ratio(large['peak_rss_mb'], small['peak_rss_mb'])}, growth ratio {ratio(growth(large), growth(small))}")
    for result in naive:
        same = small if result["examples"] == small["examples"] else None
        versus = (f"; vs streaming all {small['taps']} taps over the same examples: peak RSS "
                  f"{ratio(result['peak_rss_mb'], same['peak_rss_mb'])}, growth {ratio(growth(result), growth(same))}"
                  if same else "")
        print(f"naive over {result['examples']:,} examples ({result['taps']} taps): peak RSS "
              f"{result['peak_rss_mb']:,.0f} MB, growth {growth(result):,.0f} MB{versus}")
    if len(naive) > 1:
        first, last = naive[0], naive[-1]
        print(f"naive, {last['examples']:,} vs {first['examples']:,} examples: growth ratio "
              f"{ratio(growth(last), growth(first))}")
    activation_bytes, gram_bytes = naive_bytes(naive[0]["features"], large["examples"])
    print(f"naive over {large['examples']:,} examples would hold {activation_bytes / 2**20:,.0f} MB of float32 "
          f"activations + {gram_bytes / 2**20:,.0f} MB of float64 Gram matrices for its {naive[0]['taps']} taps "
          f"(computed from the shapes, not run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
