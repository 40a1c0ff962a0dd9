"""Benchmark: end-to-end time per 1,000 examples of the full ViT + ResNet CKA heatmap, split into its parts.

The heatmap is the Section 4 one (``vitcnn_tf.paper.representation_structure``): every tap of ``ViT-CPU/4`` and
``ResNetV2-CPU`` except the attention probabilities (``*/attn``) and the logits, both models run side by side on
the same minibatches (``representations.joint_tap_model``) into one ``MinibatchCKA``, whose ``[L, L]`` result
holds the within-ViT, within-ResNet and cross-model maps. The shapes10 test split (a stratified subset) is
streamed through it in three ways, on the same minibatches, in the same run:

  plain forward       both models' logits, one compiled call per minibatch (what ``model.predict`` does): the
                      baseline;
  split pipeline      the compiled tap extraction (``representations.tap_model``) timed alone, then the compiled
                      ``MinibatchCKA.update_state`` on its outputs timed alone: where the time goes;
  end to end          ``representations.accumulate_cka(joint_model, dataset)``, the public streaming helper, which
                      runs both in one compiled step (so TensorFlow can overlap a tap's Gram matrix with the rest
                      of the forward pass: end to end can take less than the split pipeline's sum).

Times are per 1,000 examples in the steady state (first minibatch excluded), by the wall clock and in CPU time of
the process (all threads: TensorFlow uses every core; CPU time is less sensitive than the wall clock to other
processes sharing the machine); the first minibatch's time, which includes tracing (``accumulate_cka`` traces its
update step on every call), is given apart. With ``--repeats`` the three ways run in turn that many times and the
fastest of each is kept.
Trained zoo models are used when ``--zoo-dir`` holds them, untrained ones otherwise (same cost).

    python benchmarks/heatmap_bench.py                      # 1,024 test examples, batches of 128, 2 repeats
    python benchmarks/heatmap_bench.py --quick              # 256 examples, 1 repeat
    python benchmarks/heatmap_bench.py --num-examples 2000 --batch-size 200 --repeats 1
"""

import argparse
import os
import sys

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _common  # noqa: E402
from vitcnn_tf import representations  # noqa: E402
from vitcnn_tf.metrics.cka import MinibatchCKA  # noqa: E402

QUICK = dict(num_examples=256, repeats=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-examples", type=int, default=1024,
                        help="test examples streamed per run, a stratified subset (default 1024)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per minibatch (default 128)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each way, fastest kept (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['num_examples']} examples, {QUICK['repeats']} repeat (overrides both)")
    _common.add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_examples, args.repeats = QUICK["num_examples"], QUICK["repeats"]
    if args.batch_size < 4 or args.num_examples < args.batch_size or args.repeats < 1:
        parser.error("need batch-size >= 4 (unbiased HSIC), num-examples >= batch-size and repeats >= 1")
    return args


def time_forward(forward, dataset):
    """Plain forward over ``dataset``: logits of both models fetched as NumPy -> BatchClock."""
    clock = _common.BatchClock(dataset)
    for images, _ in clock:
        [np.asarray(logits) for logits in forward(images)]
    clock.stop()
    return clock


def time_split(extract, dataset, num_taps):
    """Extraction and CKA update timed apart -> (extraction seconds [B, 2], CKA seconds [B, 2], sizes [B], CKA [L, L]);
    seconds are wall clock and CPU time (``_common.clocks``)."""
    metric = MinibatchCKA(num_taps)
    update = tf.function(metric.update_state, autograph=False)  # compiled, as inside accumulate_cka
    extraction, accumulation, sizes = [], [], []
    for images, _ in dataset:
        start = np.array(_common.clocks())
        taps = extract(images)  # eager calls of compiled functions return when their work is done
        middle = np.array(_common.clocks())
        update(taps)
        end = np.array(_common.clocks())
        extraction.append(middle - start)
        accumulation.append(end - middle)
        sizes.append(int(images.shape[0]))
    return np.array(extraction), np.array(accumulation), sizes, np.asarray(metric.result())


def time_end_to_end(joint, dataset):
    """``accumulate_cka`` over ``dataset`` -> (BatchClock, CKA [L, L])."""
    clock = _common.BatchClock(dataset)
    metric, _, _ = representations.accumulate_cka(joint, clock, progress=False)
    result = np.asarray(metric.result())
    clock.stop()
    return clock, result


def main(argv=None):
    args = parse_args(argv)
    models, origin = _common.cpu_pair(args)
    taps = {name: _common.heatmap_taps(model) for name, model in models.items()}
    joint = representations.joint_tap_model(models, taps)
    names = list(joint.taps)
    size = _common.image_size(joint)
    dataset = _common.shapes10_batches("test", args.num_examples, args.batch_size, size)
    num_batches = int(dataset.cardinality())
    print(f"{_common.describe_pair(models, taps)} ({origin})")
    print(f"heatmap [{len(names)}, {len(names)}]: within ViT [{len(taps['vit'])}, {len(taps['vit'])}], within "
          f"ResNet [{len(taps['resnet'])}, {len(taps['resnet'])}], cross [{len(taps['vit'])}, {len(taps['resnet'])}]")
    print(f"shapes10 test: {num_batches * args.batch_size} examples in {num_batches} minibatches of {args.batch_size} "
          f"at {size}x{size}, best of {args.repeats} run(s); TF {tf.__version__}, {os.cpu_count()} CPUs")

    forward = tf.function(lambda images: [models[name](images, training=False) for name in models], autograph=False)
    tap_model = representations.tap_model(joint, names)
    extract = tf.function(lambda images: tap_model(images, training=False), autograph=False)
    warmup = next(iter(dataset))[0]
    forward(warmup)
    extract(warmup)  # traces both compiled forwards once, outside the timings

    rates = {"forward": [], "extraction": [], "cka": [], "end_to_end": []}  # per repeat: [wall, CPU] per 1,000
    firsts = {"forward": [], "cka": [], "end_to_end": []}  # per repeat: [wall, CPU] of the first minibatch
    totals = []
    for _ in range(args.repeats):
        clock = time_forward(forward, dataset)
        steady, first = _common.steady_and_first(clock.durations(), clock.sizes)
        rates["forward"].append(steady)
        firsts["forward"].append(first)
        extraction, accumulation, sizes, split_cka = time_split(extract, dataset, len(names))
        rates["extraction"].append(_common.steady_and_first(extraction, sizes)[0])
        rates["cka"].append(_common.steady_and_first(accumulation, sizes)[0])
        firsts["cka"].append(accumulation[0])
        clock, heatmap = time_end_to_end(joint, dataset)
        steady, first = _common.steady_and_first(clock.durations(), clock.sizes)
        rates["end_to_end"].append(steady)
        firsts["end_to_end"].append(first)
        totals.append(clock.durations()[:, 0].sum())
    # Fastest repeat of each way, for each clock separately.
    best = {key: np.min(values, axis=0) for key, values in rates.items()}
    first = {key: np.min(values, axis=0)[0] for key, values in firsts.items()}
    best["split"] = best["extraction"] + best["cka"]
    forward_rate = best["forward"]

    print("seconds per 1,000 examples (steady state) by the wall clock and in CPU time (all threads of this process; "
          "less sensitive to other load), each with its ratio to the plain forward of the same run:")
    print(f"  {'':<40} {'wall':>8}   {'ratio':>5}  {'CPU':>8}   {'ratio':>5}")

    def row(label, key, note=""):
        wall, cpu = best[key]
        print(f"  {label:<40} {wall:8.2f} s {wall / forward_rate[0]:5.2f}x  {cpu:8.2f} s {cpu / forward_rate[1]:5.2f}x"
              f"{note}")

    row("plain forward (logits of both models)", "forward", f"   (first minibatch {first['forward']:.2f} s wall)")
    row(f"tap extraction ({len(names)} taps)", "extraction")
    row("CKA accumulation (MinibatchCKA)", "cka", f"   (first update incl. tracing {first['cka']:.2f} s wall)")
    row("split pipeline: extraction + CKA", "split")
    row("end to end: accumulate_cka", "end_to_end",
        f"   (first minibatch incl. tracing {first['end_to_end']:.2f} s wall)")
    shares = best["extraction"] / best["split"]
    print(f"time split of the heatmap: extraction {shares[0]:.0%} / CKA accumulation {1 - shares[0]:.0%} (wall), "
          f"{shares[1]:.0%} / {1 - shares[1]:.0%} (CPU); end to end / split pipeline "
          f"{best['end_to_end'][0] / best['split'][0]:.2f}x (wall), "
          f"{best['end_to_end'][1] / best['split'][1]:.2f}x (CPU)")
    print(f"heatmap overhead over the plain forward: {best['end_to_end'][0] / forward_rate[0]:.2f}x (wall), "
          f"{best['end_to_end'][1] / forward_rate[1]:.2f}x (CPU); the whole heatmap of {num_batches * args.batch_size} "
          f"examples took {min(totals):.1f} s")
    print(f"check: max |end-to-end heatmap - split-pipeline heatmap| {np.nanmax(np.abs(heatmap - split_cka)):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
