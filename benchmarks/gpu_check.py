r"""GPU check: the CKA ops keep float32 precision with TensorFloat-32 on, run on the GPU, and how fast the paper's
CKA heatmaps stream there.

Three parts, each printed as a short report and written to ``--out`` as JSON:

  precision   TensorFloat-32 is turned on for the whole process (TensorFlow's default on A100 / H100 / H200 GPUs),
              then the compiled CKA ops (``linear_cka``, biased and unbiased, and ``cka`` of ``gram_linear``),
              ``MinibatchCKA`` and ``representations.accumulate_cka`` run on float32 features with a large mean
              (where TensorFloat-32's 10-bit mantissa shows most). Their error against the float64 NumPy reference
              (``vitcnn_tf.metrics.reference``) must be float32-level (below ``--tolerance``, default 1e-5), while
              the same CKA from a plain ``tf.matmul`` Gram matrix with TensorFloat-32 on shows what the guard
              (``vitcnn_tf.metrics.precision.full_float32_precision``) prevents (about 1e-3 on such GPUs). It also
              reads the TensorFloat-32 setting inside the guard and after it.
  placement   In a child process, soft device placement off (an op without a kernel for the device fails instead
              of falling back to the CPU) and ``tf.debugging.set_log_device_placement`` on: every op and
              ``MinibatchCKA.update_state`` runs under ``tf.device(<device>)``; the report gives each output's
              device and the op types the placer put on the CPU, read from the child's placement log. An error,
              an output elsewhere or a matrix product on the CPU fails the check.
  throughput  Random-weight ViT-B/16 at 224 px (``vitcnn_tf.models.get_model("ViT-B/16")``), ``MinibatchCKA``
              over its 24 block residual taps (``block*/+sa``, ``block*/+mlp``) by ``accumulate_cka``: images/s
              over ``--batches`` minibatches after ``--warmup`` ones; then the cross-model heatmap of ViT-B/16
              and BiT-R50x1 (24 ViT taps and BiT's 16 unit outputs ``block*/unit*/+res``, every pair) the same way.

    python benchmarks/gpu_check.py --out gpu_check.json                     # GPU, batches of 128, a few minutes
    python benchmarks/gpu_check.py --out gpu_check.json --batch-size 256    # larger minibatches
    python benchmarks/gpu_check.py --out check.json --device cpu --quick    # CPU smoke run: small models

``--device auto`` (the default) uses the first GPU when TensorFlow sees one, else the CPU (TensorFloat-32 does not
exist there: the precision part then only shows the guard's bookkeeping and float32 errors). ``--quick`` shrinks
the models (32 px input, 2 ViT blocks, 1 unit per BiT stage, narrow widths), the features and the batches, for a
smoke run on a CPU. Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vitcnn_tf import atomic_io, representations  # noqa: E402
from vitcnn_tf.metrics import cka as cka_ops  # noqa: E402
from vitcnn_tf.metrics import reference  # noqa: E402
from vitcnn_tf.metrics.precision import full_float32_precision  # noqa: E402
from vitcnn_tf.models import get_model  # noqa: E402

VIT_TAPS = r"block\d+/\+(sa|mlp)"
BIT_TAPS = r"block\d/unit\d+/\+res"
# --quick: config overrides of the two models, and the sizes of the precision part.
QUICK_VIT = dict(image_size=32, num_layers=2, hidden_size=64, mlp_dim=128, num_heads=2)
QUICK_BIT = dict(image_size=32, block_counts=(1, 1, 1, 1), width_factor=0.25, num_groups=8)
FULL_FEATURES = dict(examples=256, features=4096, batches=4)
QUICK_FEATURES = dict(examples=32, features=256, batches=2)
FEATURE_MEAN = 10.0  # features = FEATURE_MEAN + N(0, 1): a large mean makes the raw Gram matrix ill-conditioned
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "_MklMatMul", "_FusedMatMul")
PLACEMENT_LINE = re.compile(r"^(?P<node>\S+): \((?P<op>[A-Za-z0-9_]+)\): (?P<device>/job:\S+)$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON report path")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="where the ops run (default: auto, the first GPU if any)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per minibatch of the heatmaps (default: 128; --quick: 8)")
    parser.add_argument("--batches", type=int, default=None, help="timed minibatches per heatmap (default: 10; "
                        "--quick: 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed minibatches first (default: 2)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest CKA error against the float64 reference that passes (default: 1e-5)")
    parser.add_argument("--no-cross", dest="cross", action="store_false",
                        help="skip the ViT-B/16 vs BiT-R50x1 heatmap")
    parser.add_argument("--quick", action="store_true", help="small models and sizes, for a CPU smoke run")
    parser.add_argument("--placement-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.quick else 128)
    args.batches = args.batches or (2 if args.quick else 10)
    if args.batch_size < 4:
        parser.error(f"--batch-size={args.batch_size}: minibatch CKA needs at least 4 examples per minibatch")
    if args.batches < 1 or args.warmup < 0:
        parser.error(f"--batches={args.batches} needs at least 1 and --warmup={args.warmup} at least 0")
    return args


def select_device(choice):
    """``(device string for tf.device, kind "GPU" / "CPU", description)``; ``choice="gpu"`` without a GPU exits."""
    gpus = tf.config.list_physical_devices("GPU")
    if choice == "gpu" and not gpus:
        sys.exit("--device gpu: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty)")
    if gpus and choice != "cpu":
        details = tf.config.experimental.get_device_details(gpus[0])
        return "/GPU:0", "GPU", f"{details.get('device_name', 'GPU')} (compute capability " \
                                f"{details.get('compute_capability')})"
    return "/CPU:0", "CPU", f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def large_mean_features(rng, examples, features):
    """float32 ``[examples, features]`` drawn as ``FEATURE_MEAN + N(0, 1)``."""
    return (FEATURE_MEAN + rng.standard_normal((examples, features))).astype(np.float32)


def precision_check(device, sizes, tolerance):
    """CKA errors against the float64 reference with TensorFloat-32 on globally: the guarded ops and an unguarded
    ``tf.matmul`` Gram matrix for comparison. Returns the JSON-able part of the report."""
    rng = np.random.default_rng(0)
    n, d = sizes["examples"], sizes["features"]
    x = large_mean_features(rng, n, d)
    y = (x[:, : d // 2] @ rng.standard_normal((d // 2, d // 2)).astype(np.float32) / np.sqrt(d / 2) + x[:, d // 2:]
         + rng.standard_normal((n, d // 2)).astype(np.float32))
    y = (y + FEATURE_MEAN).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    truth = {"linear_cka": reference.linear_cka(x64, y64),
             "linear_cka_unbiased": reference.linear_cka(x64, y64, unbiased=True),
             "cka_of_gram_linear": reference.cka(reference.gram_linear(x64), reference.gram_linear(y64))}
    tf.config.experimental.enable_tensor_float_32_execution(True)
    with tf.device(device):
        inside_guard = None
        with full_float32_precision():
            inside_guard = tf.config.experimental.tensor_float_32_execution_enabled()
        after_guard = tf.config.experimental.tensor_float_32_execution_enabled()
        values = {"linear_cka": cka_ops.linear_cka(x, y),
                  "linear_cka_unbiased": cka_ops.linear_cka(x, y, unbiased=True),
                  "cka_of_gram_linear": cka_ops.cka(cka_ops.gram_linear(x), cka_ops.gram_linear(y))}
        # The same CKA from Gram matrices of a plain float32 tf.matmul, TensorFloat-32 left on: what the guard avoids.
        unguarded_grams = [np.asarray(tf.matmul(v, v, transpose_b=True), dtype=np.float64) for v in (x, y)]
        batches_x = [[large_mean_features(rng, n, d), large_mean_features(rng, n, d // 4)]
                     for _ in range(sizes["batches"])]
        metric = cka_ops.MinibatchCKA(2)
        for batch in batches_x:
            metric.update_state(batch)
        values["MinibatchCKA"] = metric.result()
    truth["MinibatchCKA"] = reference.minibatch_cka([[b.astype(np.float64) for b in batch] for batch in batches_x])
    truth["unguarded_tf32_matmul"] = truth["cka_of_gram_linear"]
    values["unguarded_tf32_matmul"] = reference.cka(*unguarded_grams)
    errors = {name: float(np.max(np.abs(np.asarray(values[name], dtype=np.float64) - truth[name])))
              for name in values}
    guarded = {name: error for name, error in errors.items() if name != "unguarded_tf32_matmul"}
    return {"tf32_enabled_globally": tf.config.experimental.tensor_float_32_execution_enabled(),
            "tf32_inside_guard": bool(inside_guard), "tf32_after_guard": bool(after_guard),
            "examples": n, "features": d, "feature_mean": FEATURE_MEAN, "max_abs_error": errors,
            "tolerance": tolerance,
            "passed": bool(not inside_guard and after_guard and max(guarded.values()) <= tolerance)}


def placement_outputs(device, sizes):
    """Runs every CKA op and ``MinibatchCKA.update_state`` / ``result`` under ``tf.device(device)`` with soft
    placement off and the placement log on; returns ``({call: output device}, {call: error})``. The log stays on
    for the rest of the process, so :func:`placement_check` runs this in a child process."""
    rng = np.random.default_rng(1)
    x = large_mean_features(rng, sizes["examples"], 64)
    y = large_mean_features(rng, sizes["examples"], 32)
    calls = {"gram_linear": lambda: cka_ops.gram_linear(x),
             "gram_rbf": lambda: cka_ops.gram_rbf(x),
             "center_gram": lambda: cka_ops.center_gram(cka_ops.gram_linear(x), unbiased=True),
             "hsic": lambda: cka_ops.hsic(cka_ops.gram_linear(x), cka_ops.gram_linear(y), unbiased=True),
             "cka": lambda: cka_ops.cka(cka_ops.gram_linear(x), cka_ops.gram_linear(y)),
             "linear_cka": lambda: cka_ops.linear_cka(x, y)}
    outputs, errors = {}, {}
    tf.config.set_soft_device_placement(False)
    tf.debugging.set_log_device_placement(True)
    with tf.device(device):
        for name, call in calls.items():
            try:
                outputs[name] = call().device
            except Exception as error:  # noqa: BLE001 (a missing kernel is the finding, reported per op)
                errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        try:
            metric = cka_ops.MinibatchCKA(2, 1)
            metric.update_state([x, y], [y])
            outputs["MinibatchCKA.update_state"] = tf.convert_to_tensor(metric.cross_hsic).device
            outputs["MinibatchCKA.result"] = metric.result().device
        except Exception as error:  # noqa: BLE001
            errors["MinibatchCKA"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return outputs, errors


def placement_check(args, kind):
    """Runs :func:`placement_outputs` in a child process (this script with ``--placement-child``); returns each
    output's device, the op types the placer put on the CPU (read from the child's placement log) and any error."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "placement.json")
        argv = [sys.executable, os.path.abspath(__file__), "--placement-child", "--device", kind.lower(),
                "--out", path] + (["--quick"] if args.quick else [])
        child = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if child.returncode != 0 or not os.path.exists(path):
            tail = (child.stdout + child.stderr)[-2000:]
            return {"soft_placement": False, "output_devices": {}, "placement_log_nodes": 0, "op_types_on_cpu": [],
                    "outputs_not_on_device": {}, "errors": {"child process": f"exit status {child.returncode}: "
                                                                              f"{tail}"}, "passed": False}
        with open(path) as handle:
            found = json.load(handle)
    outputs, errors = found["outputs"], found["errors"]
    placed = [match.groupdict() for match in map(PLACEMENT_LINE.match, child.stdout.splitlines()) if match]
    on_cpu = sorted({entry["op"] for entry in placed if "/device:CPU:" in entry["device"]})
    wrong_outputs = {name: where for name, where in outputs.items() if f"device:{kind}:" not in where}
    cpu_matmuls = [op for op in on_cpu if op in MATMUL_OPS] if kind == "GPU" else []
    return {"soft_placement": False, "output_devices": outputs, "errors": errors,
            "placement_log_nodes": len(placed), "op_types_on_cpu": on_cpu if kind == "GPU" else [],
            "outputs_not_on_device": wrong_outputs,
            "passed": bool(placed and not errors and not wrong_outputs and not cpu_matmuls)}


def random_images(batch_size, size, count):
    """``tf.data.Dataset`` of ``count`` batches of the same random images ``[batch_size, size, size, 3]``."""
    images = np.random.default_rng(2).uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
    return tf.data.Dataset.from_tensors(images).repeat(count)


class Stamps:
    """Iterates a dataset and records the wall clock when each batch is handed out (``handed``) and when the
    consumer asks for the next one (``done``: the batch's work is finished)."""

    def __init__(self, dataset):
        self.dataset, self.handed, self.done = dataset, [], []

    def __iter__(self):
        for batch in self.dataset:
            self.handed.append(time.perf_counter())
            yield batch
            self.done.append(time.perf_counter())


def heatmap_throughput(model, layers, args, device):
    """Images/s of ``accumulate_cka`` over ``model``'s ``layers`` after ``args.warmup`` minibatches (each
    minibatch's terms are read back, so its work is finished before the next one is handed out)."""
    size = int(model.inputs[0].shape[1])
    stamps = Stamps(random_images(args.batch_size, size, args.warmup + args.batches))
    with tf.device(device):
        metric, names, _, _ = representations.accumulate_cka(model, stamps, layers, progress=False,
                                                             return_batch_terms=True)
        heatmap = metric.result().numpy()
    seconds = stamps.done[-1] - stamps.handed[args.warmup]
    return {"taps": len(names), "image_size": size, "batch_size": args.batch_size, "warmup_batches": args.warmup,
            "timed_batches": args.batches, "timed_seconds": seconds,
            "images_per_second": args.batches * args.batch_size / seconds,
            "first_batches_seconds": stamps.handed[args.warmup] - stamps.handed[0],
            "batch_seconds": (np.array(stamps.done) - np.array(stamps.handed)).tolist(),
            "heatmap_finite_fraction": float(np.isfinite(heatmap).mean()),
            "heatmap_diagonal_max_error": float(np.max(np.abs(np.diag(heatmap) - 1.0)))}


def throughput_check(args, device):
    """The ViT-B/16 heatmap and (unless ``--no-cross``) the ViT-B/16 vs BiT-R50x1 heatmap."""
    tf.config.experimental.enable_tensor_float_32_execution(True)
    vit_overrides, bit_overrides = (QUICK_VIT, QUICK_BIT) if args.quick else ({}, {})
    with tf.device(device):
        vit = get_model("ViT-B/16", **vit_overrides)
    result = {"vit_b16": heatmap_throughput(vit, VIT_TAPS, args, device)}
    result["vit_b16"]["model"] = f"ViT-B/16 {vit_overrides or ''}".strip()
    if args.cross:
        with tf.device(device):
            bit = get_model("BiT-R50x1", **bit_overrides)
            joint = representations.joint_tap_model({"vit": vit, "bit": bit}, {"vit": VIT_TAPS, "bit": BIT_TAPS})
        result["vit_b16_x_bit_r50x1"] = heatmap_throughput(joint, None, args, device)
        result["vit_b16_x_bit_r50x1"]["model"] = f"ViT-B/16 + BiT-R50x1 {bit_overrides or ''}".strip()
    return result


def gpu_memory_peak_gib(kind):
    """Peak GPU memory TensorFlow allocated on GPU:0 so far, GiB (None on the CPU)."""
    if kind != "GPU":
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30


def print_report(report):
    print(f"device: {report['device']}; TensorFlow {report['tensorflow']}")
    precision = report["precision"]
    print(f"\nprecision ({precision['examples']} x {precision['features']} float32 features, mean "
          f"{precision['feature_mean']:g}); TF32 on globally: {precision['tf32_enabled_globally']}, inside the guard: "
          f"{precision['tf32_inside_guard']}, after it: {precision['tf32_after_guard']}")
    for name, error in precision["max_abs_error"].items():
        print(f"  {name:<26} max |CKA - float64 reference| = {error:.2e}")
    print(f"  -> {'PASS' if precision['passed'] else 'FAIL'} (guarded ops within {precision['tolerance']:g})")
    placement = report["placement"]
    print(f"\nplacement (soft placement off, {placement['placement_log_nodes']} placed graph nodes logged)")
    for name, where in placement["output_devices"].items():
        print(f"  {name:<26} output on {where}")
    for name, error in placement["errors"].items():
        print(f"  {name:<26} ERROR {error}")
    if placement["op_types_on_cpu"]:
        print(f"  op types the placer put on the CPU: {', '.join(placement['op_types_on_cpu'])}")
    print(f"  -> {'PASS' if placement['passed'] else 'FAIL'}")
    print("\nheatmap throughput (random weights, accumulate_cka, steady state)")
    for name, row in report["throughput"].items():
        print(f"  {row['model']}: {row['taps']} taps at {row['image_size']} px, batches of {row['batch_size']}: "
              f"{row['images_per_second']:,.1f} images/s over {row['timed_batches']} batches "
              f"({row['first_batches_seconds']:.1f} s for the {row['warmup_batches']} warm-up batches)")
    if report["gpu_memory_peak_gib"] is not None:
        print(f"  peak GPU memory: {report['gpu_memory_peak_gib']:.2f} GiB")
    print(f"\n{'ALL PASS' if report['passed'] else 'SOME CHECKS FAILED'}; total {report['seconds']:.0f} s; "
          f"JSON: {report['out']}")


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    device, kind, description = select_device(args.device)
    sizes = QUICK_FEATURES if args.quick else FULL_FEATURES
    if args.placement_child:
        outputs, errors = placement_outputs(device, sizes)
        atomic_io.write_json(args.out, {"outputs": outputs, "errors": errors})
        return 0
    report = {"device": description, "tensorflow": tf.__version__, "quick": args.quick,
              "tf32_default": tf.config.experimental.tensor_float_32_execution_enabled()}
    report["precision"] = precision_check(device, sizes, args.tolerance)
    report["placement"] = placement_check(args, kind)
    report["throughput"] = throughput_check(args, device)
    report["gpu_memory_peak_gib"] = gpu_memory_peak_gib(kind)
    report["passed"] = report["precision"]["passed"] and report["placement"]["passed"]
    report["seconds"] = time.perf_counter() - start
    report["out"] = os.path.abspath(args.out)
    atomic_io.write_json(args.out, report)
    print_report(report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
