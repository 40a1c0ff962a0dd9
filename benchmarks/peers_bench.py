"""Benchmark: our ``MinibatchCKA`` against the PyTorch CKA packages of PyPI, on identical stored activations.

Peers (the ``[peers]`` extra: ``pip install -e ".[peers]"``; not installed by CI):

* ``pytorch-cka`` (module ``cka``): ``compute_cka(model, model, loader, layers=...)``;
* ``cka-pytorch``: ``CKACalculator(model, model, model1_layers=...).calculate_cka_matrix(loader, num_epochs=1)``;
* ``torch-cka``: ``CKA(model, model, model1_layers=..., model2_layers=...).compare(loader, loader)``;
* ``ckatorch``: its minibatch function ``cka_batch(x, y)`` on each layer pair's ``[B, n, d]`` stacks of all
  minibatches, for the pairs ``i <= j`` (its ``CKA`` class keeps only the last minibatch of each pass and needs
  3-D layer outputs, so it does not compute minibatch CKA of these layers).

The model-based peers read the activations through a replay ``torch.nn.Module`` whose identity sub-modules
``layer00``, ``layer01``, ... emit the stored layers of the minibatch whose example indices the loader yields, so
their hooks see exactly the stored tensors. Each tool runs in a worker process of its own that loads the stored
activations once (``torch.from_numpy``, no copy; ``tf.constant`` for ours), with 2 threads
(``torch.set_num_threads(2)``; TensorFlow with 2 intra-op threads). Rounds are interleaved: round ``r`` times
one full heatmap of every tool in turn. Ours and the fast peers get an untimed warm-up run and ``--rounds``
rounds; the slow peers (torch-cka, ckatorch) no warm-up and ``--slow-rounds`` rounds (default 1, the first). Times are
medians over rounds; ratios are to our median in the same run (and, per round, to our time in that round).
Memory is each worker's peak resident set size (``VmHWM``) and its growth over the RSS after loading (and
converting) the activations. Each heatmap is compared with the float64 reference ``reference.minibatch_cka``.

Problems: ``50-layer`` (``cka_bench.py``'s: 50 ReLU layers of widths 512..8192, n = 256, 8 minibatches) and
``vit`` (24 token layers ``[n, 65, 64]``, 2,048 examples in minibatches of 128), both from
``cka_bench.synthetic_activations``.

    python benchmarks/peers_bench.py                 # both problems
    python benchmarks/peers_bench.py --quick         # tiny shapes, a functional check
"""

import argparse
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PEERS = {  # tool -> (PyPI distribution, what it computes)
    "pytorch-cka": ("pytorch-cka", "unbiased HSIC_1 summed over minibatches; float32 Grams of uncentred features; "
                                   "clamped to [0, 1]"),
    "cka-pytorch": ("cka-pytorch", "unbiased HSIC_1 summed over minibatches; float32 Grams of uncentred features; "
                                   "+1e-4 under the square root"),
    "torch-cka": ("torch-cka", "unbiased HSIC_1 averaged over minibatches (the same ratio); float32 Grams of "
                               "uncentred features, recomputed per layer pair"),
    "ckatorch": ("ckatorch", "unbiased HSIC_1 summed over minibatches; float64 Grams of uncentred features, "
                             "recomputed per layer pair"),
}
OURS = ("ours", "unbiased HSIC_1 summed over minibatches; float32 Grams of centred features, float64 after")
SLOW = ("torch-cka", "ckatorch")
TOOLS = ["ours", "pytorch-cka", "cka-pytorch", "torch-cka", "ckatorch"]
MARK = "@@"  # prefix of the worker's protocol lines on stdout


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=["50-layer", "vit"], default=["50-layer", "vit"])
    parser.add_argument("--tools", nargs="+", choices=TOOLS[1:], default=TOOLS[1:], help="peers to run (all)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of ours and the fast peers (3)")
    parser.add_argument("--slow-rounds", type=int, default=1, help="timed rounds of torch-cka and ckatorch (1)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a functional check, not a measurement)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slow_rounds < 1 or args.slow_rounds > args.rounds:
        parser.error("need 1 <= --slow-rounds <= --rounds")
    return args


def require_peers(tools):
    """{tool: installed version}; a missing peer is an error naming its package and the extra."""
    versions = {}
    for tool in ["torch"] + list(tools):
        distribution = PEERS[tool][0] if tool in PEERS else tool
        try:
            versions[tool] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"peers_bench: the package {distribution!r} is not installed; install the peers with "
                     f"pip install -e \".[peers]\" (or leave it out with --tools)")
    return versions


def problem_shapes(name, quick):
    """``(layer shapes per example or None for cka_bench's widths, examples per minibatch, minibatches)``."""
    if name == "50-layer":
        return (None, 256, 8) if not quick else (None, 32, 2)
    return ([(65, 64)] * 24, 128, 16) if not quick else ([(9, 16)] * 4, 32, 4)


def store_problem(name, quick, seed, folder):
    """Generates the problem's activations with ``cka_bench``'s generator and stores one ``[B, n, ...]`` float32
    array per layer in ``folder``; returns a one-line description."""
    import cka_bench

    rng = np.random.default_rng(seed)
    shapes, n, num_batches = problem_shapes(name, quick)
    if shapes is None:
        layers, low, high = (50, 512, 8192) if not quick else (6, 64, 256)
        widths = cka_bench.layer_widths(layers, low, high, rng)
        shapes = [(w,) for w in widths]
    batches = cka_bench.synthetic_activations([int(np.prod(s)) for s in shapes], n, num_batches, rng)
    for layer, shape in enumerate(shapes):
        stack = np.stack([batch[layer].reshape((n,) + tuple(shape)) for batch in batches])
        np.save(os.path.join(folder, f"layer{layer:02d}.npy"), stack)
    size = sum(b.nbytes for batch in batches for b in batch) / 1e9
    sizes = [int(np.prod(shape)) for shape in shapes]
    layout = (f"of widths {min(sizes)}..{max(sizes)}" if len(shapes[0]) == 1
              else f"of shape [n, {', '.join(map(str, shapes[0]))}]")
    return (f"{name}: {len(shapes)} layers {layout}, {num_batches} minibatches of {n} ({num_batches * n} examples), "
            f"{size:.2f} GB float32")


def load_layers(folder):
    """``[L]`` arrays ``[B, n, ...]`` in layer order."""
    files = sorted(f for f in os.listdir(folder) if f.startswith("layer") and f.endswith(".npy"))
    return [np.load(os.path.join(folder, f)) for f in files]


def reference_heatmap(layers):
    from vitcnn_tf.metrics import reference

    batches = [[layer[b].astype(np.float64) for layer in layers] for b in range(layers[0].shape[0])]
    return reference.minibatch_cka(batches)


# ---------------------------------------------------------------------------------------------- worker processes


def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """This process's peak RSS in MB: ``VmHWM`` of ``/proc/self/status`` (``ru_maxrss`` would keep the peak of
    the parent process at the fork, which survives ``exec`` on Linux)."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024.0


def ours_runner(layers):
    from vitcnn_tf import runtime

    runtime.set_environment_defaults()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    from vitcnn_tf.metrics.cka import MinibatchCKA

    batches = [[tf.constant(layer[b]) for layer in layers] for b in range(layers[0].shape[0])]
    metric = MinibatchCKA(len(layers))

    def run():
        metric.reset_state()
        for xs in batches:
            metric.update_state(xs)
        return metric.result().numpy()

    return run


class Replay:
    """A ``torch.nn.Module`` factory: identity sub-modules ``layer00``, ... emit the stored layers of the minibatch
    whose example indices ``[n]`` it is called with."""

    @staticmethod
    def build(stacks):
        import torch

        class ReplayModule(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.names = [f"layer{i:02d}" for i in range(len(stacks))]
                for name in self.names:
                    self.add_module(name, torch.nn.Identity())

            def forward(self, indices, *_):
                batch = int(indices[0]) // stacks[0].shape[1]
                for name, stack in zip(self.names, stacks):
                    getattr(self, name)(stack[batch])
                return indices

        return ReplayModule()


def peer_runner(tool, layers):
    import torch
    import torch.utils.data

    torch.set_num_threads(2)
    torch.ones(64, 64) @ torch.ones(64, 64)  # the runtime's own start-up memory counts in the baseline, as for ours
    stacks = [torch.from_numpy(layer) for layer in layers]
    num_batches, n = layers[0].shape[:2]
    indices = torch.arange(num_batches * n)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(indices, indices), batch_size=n,
                                         shuffle=False)
    model = Replay.build(stacks)
    names = model.names
    if tool == "pytorch-cka":
        import cka

        return lambda: cka.compute_cka(model, model, loader, layers=names, device="cpu", progress=False)[0].numpy()
    if tool == "cka-pytorch":
        from cka_pytorch.cka import CKACalculator

        def run():
            calculator = CKACalculator(model, model, model1_layers=names, device=torch.device("cpu"), verbose=False)
            value = calculator.calculate_cka_matrix(loader, num_epochs=1).numpy()
            calculator.hook_manager1.clear_all()
            calculator.hook_manager2.clear_all()
            return value

        return run
    if tool == "torch-cka":
        import warnings

        from torch_cka import CKA

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "identical names" of the one replay model
                calculator = CKA(model, model, model1_layers=names, model2_layers=names, device="cpu")
                calculator.compare(loader, loader)
            for module in model.modules():
                module._forward_hooks.clear()
            return calculator.export()["CKA"].numpy()

        return run
    if tool == "ckatorch":
        import ckatorch

        flat = [stack.reshape(num_batches, n, -1) for stack in stacks]

        def run():
            heatmap = np.zeros((len(flat), len(flat)))
            for i in range(len(flat)):
                for j in range(i, len(flat)):
                    heatmap[i, j] = heatmap[j, i] = float(ckatorch.cka_batch(flat[i], flat[j]))
            return heatmap

        return run
    raise ValueError(f"unknown tool {tool!r}")


def worker(tool, folder):
    """Loads the activations, builds ``tool``'s run, then serves ``run`` / ``quit`` lines from stdin."""
    os.environ["TQDM_DISABLE"] = "1"  # the peers' progress bars
    layers = load_layers(folder)
    run = ours_runner(layers) if tool == "ours" else peer_runner(tool, layers)
    baseline = rss_mb()
    if tool not in SLOW:
        run()  # warm-up: tracing, lazy initialisation
    print(f"{MARK} ready {baseline:.1f}", flush=True)
    first = True
    for line in sys.stdin:
        if line.strip() == "run":
            start = time.perf_counter()
            heatmap = run()
            seconds = time.perf_counter() - start
            if first:
                np.save(os.path.join(folder, f"heatmap_{tool}.npy"), np.asarray(heatmap, np.float64))
                first = False
            print(f"{MARK} time {seconds:.6f}", flush=True)
        elif line.strip() == "quit":
            print(f"{MARK} peak {peak_rss_mb():.1f}", flush=True)
            return


class Worker:
    def __init__(self, tool, folder):
        self.tool = tool
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", tool, "--data", folder],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.baseline = float(self.expect("ready"))

    def expect(self, word):
        for line in self.process.stdout:
            if line.startswith(f"{MARK} {word} "):
                return line.split()[2]
        raise RuntimeError(f"peers_bench: the {self.tool} worker exited (code {self.process.wait()}) before "
                           f"'{word}'; see its error above")

    def command(self, word, answer):
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()
        return float(self.expect(answer))


# ---------------------------------------------------------------------------------------------- the comparison


def cpu_description():
    flags, model = set(), "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    vector = [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni") if flag in flags]
    absent = "" if "avx512f" in flags else ", no AVX-512"
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(vector) or 'no AVX2'}{absent}"


def compare(problem, args, tools):
    with tempfile.TemporaryDirectory(prefix="peers_bench_") as folder:
        description = store_problem(problem, args.quick, args.seed, folder)
        print(f"\n== {description}", flush=True)
        expected = reference_heatmap(load_layers(folder))
        workers = {}
        try:
            for tool in ["ours"] + tools:
                workers[tool] = Worker(tool, folder)
            times = {tool: [] for tool in workers}
            for round_index in range(args.rounds):
                for tool, process in workers.items():
                    if tool in SLOW and round_index >= args.slow_rounds:
                        continue
                    times[tool].append(process.command("run", "time"))
                print(f"round {round_index + 1}: " + ", ".join(f"{tool} {seconds[round_index]:.2f} s"
                                                               for tool, seconds in times.items()
                                                               if len(seconds) > round_index), flush=True)
            peaks = {tool: process.command("quit", "peak") for tool, process in workers.items()}
        finally:
            for process in workers.values():
                process.process.kill() if process.process.poll() is None else None
        rows = []
        ours = statistics.median(times["ours"])
        for tool, process in workers.items():
            heatmap = np.load(os.path.join(folder, f"heatmap_{tool}.npy"))
            median = statistics.median(times[tool])
            per_round = [peer / own for peer, own in zip(times[tool], times["ours"])]
            rows.append(dict(tool=tool, computes=OURS[1] if tool == "ours" else PEERS[tool][1],
                             error=float(np.max(np.abs(heatmap - expected))), seconds=median, ratio=median / ours,
                             ratio_range=(min(per_round), max(per_round)), rounds=len(times[tool]),
                             peak=peaks[tool], growth=peaks[tool] - process.baseline))
    return description, rows


def print_table(description, rows):
    print(f"\n{description}")
    print("| tool | max abs diff from float64 | time (median) | vs ours (per-round range) | peak RSS | growth | "
          "computes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        spread = "" if row["rounds"] == 1 else f" ({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f})"
        print(f"| {row['tool']} | {row['error']:.1e} | {row['seconds']:.2f} s ({row['rounds']} rounds) | "
              f"{row['ratio']:.2f}x{spread} | {row['peak'] / 1024:.2f} GB | {row['growth'] / 1024:.2f} GB | "
              f"{row['computes']} |")
    fastest = min((row for row in rows if row["tool"] != "ours"), key=lambda row: row["seconds"], default=None)
    if fastest is not None:
        verdict = "meets" if fastest["ratio"] >= 1.5 else "misses"
        print(f"fastest peer: {fastest['tool']}, {fastest['ratio']:.2f}x our time ({verdict} the 1.5x goal)")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.data)
        return 0
    versions = require_peers(args.tools)
    tools = [tool for tool in TOOLS[1:] if tool in args.tools]
    import tensorflow as tf

    print(f"CPU: {cpu_description()}; TensorFlow {tf.__version__}, torch {versions['torch']}, "
          + ", ".join(f"{tool} {versions[tool]}" for tool in tools))
    for problem in args.problems:
        print_table(*compare(problem, args, tools))
    return 0


if __name__ == "__main__":
    sys.exit(main())
