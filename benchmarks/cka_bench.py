"""Benchmark: all-pairs minibatch CKA of synthetic activations, four ways, plus the machine's matmul rate.

(a) ``vitcnn_tf.metrics.cka.MinibatchCKA`` (one update per minibatch, compiled);
(b) a per-layer-pair Python loop over the same TF ops (``gram_linear``, ``hsic(unbiased=True)``), as most public
    CKA code does (e.g. for each layer i: K = gram(x_i); for each layer j: L = gram(x_j) and the three HSIC terms);
    by default timed on a few outer-loop layers of one minibatch and extrapolated linearly (``--baseline-rows``);
(c) a vectorised NumPy float64 implementation of the same algorithm (centred Grams stacked, one matmul per batch);
(d) the NumPy float64 reference ``vitcnn_tf.metrics.reference.minibatch_cka``;
plus a plain float32 matmul through NumPy and through TF in the same run. Times exclude data generation; (a) and
(b) are timed after a warm-up call that traces / compiles (reported separately). FLOP counts are nominal:
``2 n^2 d`` per layer Gram matrix (although (a) and NumPy's ``x @ x.T`` exploit symmetry) plus ``2 L^2 n^2`` for
the HSIC products.

    python benchmarks/cka_bench.py                    # L=50 layers, widths 512..8192, n=256, 8 batches
    python benchmarks/cka_bench.py --layers 8 --max-width 1024 --batches 2 --batch-size 64   # quick check
"""

import argparse
import os
import sys
import time

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vitcnn_tf.metrics import cka, minibatch, reference  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=50, help="number of layers L (default 50)")
    parser.add_argument("--min-width", type=int, default=512, help="smallest layer width (default 512)")
    parser.add_argument("--max-width", type=int, default=8192, help="largest layer width (default 8192)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per minibatch n (default 256)")
    parser.add_argument("--batches", type=int, default=8, help="number of minibatches (default 8)")
    parser.add_argument("--baseline-rows", type=int, default=3,
                        help="(b): outer-loop layers timed on one minibatch, extrapolated to L layers x all "
                             "minibatches; 0 runs (b) in full (slow: ~50x (a)) (default 3)")
    parser.add_argument("--skip-reference", action="store_true", help="skip (d), the slow NumPy reference")
    parser.add_argument("--matmul-size", type=int, default=2048, help="size of the square float32 matmul (2048)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.layers < 1 or args.batches < 1 or args.batch_size < 4 or not 1 <= args.min_width <= args.max_width:
        parser.error("need layers >= 1, batches >= 1, batch-size >= 4 and 1 <= min-width <= max-width")
    return args


def layer_widths(num_layers, min_width, max_width, rng):
    """Log-uniform widths in [min_width, max_width], rounded to multiples of 64 where the range allows."""
    widths = np.exp(rng.uniform(np.log(min_width), np.log(max_width), num_layers))
    step = 64 if min_width >= 64 else 1
    return np.clip(np.round(widths / step) * step, min_width, max_width).astype(int).tolist()


def synthetic_activations(widths, batch_size, num_batches, rng):
    """Per minibatch, a list of ``[n, d_l]`` float32 ReLU features of a latent code drifting with depth.

    Layer ``l`` is ``relu([c_l, z_l] @ P_l)`` with ``c_l`` a 64-d code rotating from one random code to another
    over depth (so CKA falls with layer distance), ``z_l`` 32-d layer-specific noise and ``P_l`` a fixed random
    projection: cheap to generate, full rank 96.
    """
    shared_dim, noise_dim = 64, 32
    projections = [rng.standard_normal((shared_dim + noise_dim, d), dtype=np.float32) for d in widths]
    batches = []
    for _ in range(num_batches):
        start, end = (rng.standard_normal((batch_size, shared_dim), dtype=np.float32) for _ in range(2))
        layers = []
        for depth, projection in enumerate(projections):
            angle = 0.5 * np.pi * depth / max(len(widths) - 1, 1)
            code = float(np.cos(angle)) * start + float(np.sin(angle)) * end
            noise = rng.standard_normal((batch_size, noise_dim), dtype=np.float32)
            layers.append(np.maximum(np.concatenate([code, noise], axis=1) @ projection, 0.0))
        batches.append(layers)
    return batches


def run_minibatch_cka(batches_tf, num_layers):
    """(a): MinibatchCKA over all minibatches -> (CKA [L, L], seconds, warm-up seconds, traces)."""
    metric = cka.MinibatchCKA(num_layers)
    start = time.perf_counter()
    metric.update_state(batches_tf[0])
    metric.result().numpy()
    warmup = time.perf_counter() - start
    metric.reset_state()
    start = time.perf_counter()
    for layers in batches_tf:
        metric.update_state(layers)
    result = metric.result().numpy()
    return result, time.perf_counter() - start, warmup, metric._batch_terms.experimental_get_tracing_count()


def time_grams_only(batches_tf):
    """Seconds for just (a)'s Gram matrices of the centred features (float32), all layers and minibatches."""

    @tf.function(autograph=False)
    def grams(layers):
        return tf.stack([minibatch._symmetric_gram(x - tf.reduce_mean(x, axis=0, keepdims=True)) for x in layers])

    grams(batches_tf[0]).numpy()
    start = time.perf_counter()
    for layers in batches_tf:
        grams(layers).numpy()
    return time.perf_counter() - start


def run_pair_loop(layers_tf, rows):
    """(b) on one minibatch, outer loop restricted to ``rows`` -> (HSIC sums for those rows, seconds)."""
    num_layers = len(layers_tf)
    cross, self_x, self_y = (np.zeros((len(rows), num_layers)) for _ in range(3))
    start = time.perf_counter()
    for a, i in enumerate(rows):
        gram_x = cka.gram_linear(layers_tf[i])
        for j in range(num_layers):
            gram_y = cka.gram_linear(layers_tf[j])
            cross[a, j] += float(cka.hsic(gram_x, gram_y, unbiased=True))
            self_x[a, j] += float(cka.hsic(gram_x, gram_x, unbiased=True))
            self_y[a, j] += float(cka.hsic(gram_y, gram_y, unbiased=True))
    seconds = time.perf_counter() - start
    return cross / np.sqrt(self_x * self_y), seconds


def numpy_vectorised(batches):
    """(c): the same algorithm in NumPy float64: U-centred Grams stacked, one matmul per minibatch -> [L, L]."""
    total = None
    for layers in batches:
        grams = []
        for x in layers:
            x = x.reshape(x.shape[0], -1).astype(np.float64)
            x -= x.mean(axis=0)
            grams.append(x @ x.T)
        grams = np.stack(grams)
        n = grams.shape[-1]
        diagonal = np.arange(n)
        grams[:, diagonal, diagonal] = 0.0
        means = grams.sum(axis=2) / (n - 2)
        means -= means.sum(axis=1, keepdims=True) / (2 * (n - 1))
        grams -= means[:, :, None] + means[:, None, :]
        grams[:, diagonal, diagonal] = 0.0
        flat = grams.reshape(len(layers), -1)
        terms = flat @ flat.T / (n * (n - 3))
        total = terms if total is None else total + terms
    self_terms = np.diag(total)
    return total / np.sqrt(self_terms[:, None] * self_terms[None, :])


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def matmul_rates(size, rng, repeats=5):
    """Best-of-``repeats`` GFLOP/s of a square float32 matmul through NumPy and through TF."""
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    flops = 2.0 * size**3
    tf_matmul = tf.function(tf.matmul, autograph=False)
    ta, tb = tf.constant(a), tf.constant(b)
    tf_matmul(ta, tb).numpy()
    rates = {}
    for name, run in (("numpy", lambda: a @ b), ("tensorflow", lambda: tf_matmul(ta, tb).numpy())):
        run()
        best = min(timed(run)[1] for _ in range(repeats))
        rates[name] = flops / best / 1e9
    return rates


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    widths = layer_widths(args.layers, args.min_width, args.max_width, rng)
    n, num_layers, num_batches = args.batch_size, args.layers, args.batches
    print(f"L={num_layers} layers, widths {min(widths)}..{max(widths)} (mean {np.mean(widths):.0f}), n={n}, "
          f"{num_batches} minibatches; TF {tf.__version__}, NumPy {np.__version__}, {os.cpu_count()} CPUs")
    batches, generation = timed(synthetic_activations, widths, n, num_batches, rng)
    batches_tf = [[tf.constant(x) for x in layers] for layers in batches]
    print(f"generated {sum(x.nbytes for x in batches[0]) * num_batches / 1e9:.2f} GB of float32 activations in "
          f"{generation:.1f} s (not timed below)")
    flops = num_batches * (2.0 * n * n * sum(widths) + 2.0 * num_layers**2 * n * n)

    rates = matmul_rates(args.matmul_size, rng)
    best_rate = max(rates.values())
    print(f"float32 matmul {args.matmul_size}^3: NumPy {rates['numpy']:.1f} GFLOP/s, "
          f"TF {rates['tensorflow']:.1f} GFLOP/s")

    cka_a, time_a, warmup_a, traces = run_minibatch_cka(batches_tf, num_layers)
    print(f"(a) MinibatchCKA                 {time_a:8.2f} s   ({flops / time_a / 1e9:.1f} GFLOP/s = "
          f"{flops / time_a / 1e9 / best_rate:.0%} of the faster float32 matmul; first call incl. trace/compile "
          f"{warmup_a:.2f} s; {traces} trace(s) for {num_batches + 1} updates)")

    time_grams = time_grams_only(batches_tf)
    print(f"    where (a)'s time goes: Gram matrices {time_grams:.2f} s ({time_grams / time_a:.0%}), the rest "
          f"(float64 U-centring, the [L, n*n] x [n*n, L] HSIC product, checks, accumulation) "
          f"{max(time_a - time_grams, 0.0):.2f} s")

    rows = list(range(num_layers)) if args.baseline_rows <= 0 else sorted(
        rng.choice(num_layers, size=min(args.baseline_rows, num_layers), replace=False).tolist())
    run_pair_loop([batches_tf[0][0]] * 2, [0])  # warm-up: trace the TF ops once
    rows_b, seconds_b = run_pair_loop(batches_tf[0], rows)
    time_b = seconds_b * num_layers / len(rows) * num_batches
    extrapolated = "" if args.baseline_rows <= 0 and num_batches == 1 else (
        f"; extrapolated from {len(rows)} of {num_layers} outer-loop layers on 1 of {num_batches} minibatches "
        f"({seconds_b:.2f} s measured)")
    print(f"(b) per-layer-pair TF loop       {time_b:8.2f} s   ({time_b / time_a:.1f}x (a){extrapolated})")

    cka_c, time_c = timed(numpy_vectorised, batches)
    print(f"(c) vectorised NumPy float64     {time_c:8.2f} s   ({time_c / time_a:.2f}x (a))")

    check = reference.minibatch_cka([batches[0]])[rows]
    print(f"    (b) vs reference on its rows of minibatch 0: max |diff| {np.max(np.abs(rows_b - check)):.1e}")
    if not args.skip_reference:
        cka_d, time_d = timed(reference.minibatch_cka, batches)
        print(f"(d) NumPy reference              {time_d:8.2f} s   ({time_d / time_a:.1f}x (a))")
        print(f"    max |(a) - (d)| {np.max(np.abs(cka_a - cka_d)):.1e}, max |(c) - (d)| "
              f"{np.max(np.abs(cka_c - cka_d)):.1e}")
    else:
        print(f"    max |(a) - (c)| {np.max(np.abs(cka_a - cka_c)):.1e}")
    print(f"targets: (a) >= 20x faster than (b): {time_b / time_a:.1f}x; (a) no slower than (c): "
          f"{time_c / time_a:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
