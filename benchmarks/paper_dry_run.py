r"""Full-scale dry run of ``python -m experiments.reproduce --preset paper``: random-weight checkpoints of the paper's
models in the release format and a generated 224 px image folder, every stage timed, with its peak memory.

This proves the pipeline at the paper's scale (models, resolution, tap counts), not the findings: the weights are
random. Steps:

  1. checkpoints  random-weight models of the paper preset's checkpoint table (``experiments.reproduce.CHECKPOINTS``:
                  its file names, presets and config overrides), written with ``vitcnn_tf.models.save_npz`` into
                  ``<work>/checkpoints``: ViT-B/16, ViT-L/16, BiT-M-R50x1, Mixer-B/16 and the AugReg ViT-B/16
                  ImageNet-1k / ImageNet-21k pair (``--augreg-l16`` adds the AugReg ViT-L/16 pair of Figure 4).
  2. images       ``<work>/images/{train,test}/class_<k>/<i>.png``: ``--classes`` classes of ``--per-class``
                  224x224 images per split (smooth class-dependent colour fields plus noise), the ``image_folder``
                  dataset of ``vitcnn_tf.data``.
  3. stages       one ``python -m experiments.reproduce --preset paper --checkpoints <work>/checkpoints
                  --dataset image_folder --data-dir <work>/images --num-examples N --jobs 1 --no-progress
                  --only <stage> --out <work>/reproduce`` process per stage, so each stage's peak resident memory
                  is its own process's (``os.wait4``); then one run of every stage, which reuses the finished
                  stages (their fingerprints match) and writes the report. A stage that failed, or whose code
                  changed meanwhile, runs again there; the summary names those.

It prints a table (stage, status, the stage's own seconds, its process's wall seconds, peak RSS) and writes it
as JSON to ``--report`` (default ``<work>/dry_run.json``); each process's output is in ``<work>/logs/``.

    python benchmarks/paper_dry_run.py                       # full scale, --num-examples 32 (hours on 2 CPU cores)
    python benchmarks/paper_dry_run.py --quick               # tiny models of the same families, a few minutes

``--quick`` substitutes tiny models of the same families (64 px input, 2-3 blocks, narrow widths) through
reproduce's ``--model NAME=SPEC`` option, with 16 examples per stage. Exit status 0 when every stage that the
plan runs finished, 1 otherwise.
"""

import argparse
import concurrent.futures
import gc
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import reproduce  # noqa: E402
from vitcnn_tf import atomic_io  # noqa: E402

# The checkpoints the paper preset's stages need (reproduce.CHECKPOINTS names), and the Figure 4 L/16 pair.
CHECKPOINT_NAMES = ("vit_b16", "vit_l16", "bit_r50", "mixer_b16", "augreg_b16_i1k", "augreg_b16_i21k")
AUGREG_L16_NAMES = ("augreg_l16_i1k", "augreg_l16_i21k")
IMAGE_SIZE = 224
QUICK_IMAGE_SIZE = 64
# --quick: config overrides that shrink each preset of the table (the table's num_classes is kept; a
# representation_size of the table becomes the tiny width).
QUICK_OVERRIDES = {
    "ViT-B/16": dict(image_size=QUICK_IMAGE_SIZE, num_layers=2, hidden_size=32, mlp_dim=64, num_heads=4),
    "ViT-L/16": dict(image_size=QUICK_IMAGE_SIZE, num_layers=3, hidden_size=48, mlp_dim=96, num_heads=4),
    "BiT-R50x1": dict(image_size=QUICK_IMAGE_SIZE, width_factor=0.25, num_groups=8),
    "Mixer-B/16": dict(image_size=QUICK_IMAGE_SIZE, num_blocks=2, hidden_dim=32, tokens_mlp_dim=16,
                       channels_mlp_dim=64),
}
QUICK_NUM_EXAMPLES = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join("results", "paper_dry_run"),
                        help="folder for the checkpoints, images, stage outputs and logs (default: %(default)s)")
    parser.add_argument("--num-examples", type=int, default=None,
                        help="reproduce's --num-examples for every stage (default: 32; --quick: 16)")
    parser.add_argument("--classes", type=int, default=4, help="classes of the image folder (default: 4)")
    parser.add_argument("--per-class", type=int, default=12,
                        help="images per class in each of the train and test splits (default: 12; the 10-shot "
                             "probes need at least 10)")
    parser.add_argument("--augreg-l16", action="store_true",
                        help="also write the AugReg ViT-L/16 ImageNet-1k / -21k pair (Figure 4; 2 x 1.2 GB)")
    parser.add_argument("--only", default=None, help="reproduce's --only: the stages to run (default: all)")
    parser.add_argument("--report", default=None, help="JSON report path (default: <work>/dry_run.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models of the same families through --model NAME=SPEC, 16 examples per stage")
    args = parser.parse_args(argv)
    args.num_examples = args.num_examples or (QUICK_NUM_EXAMPLES if args.quick else 32)
    args.report = args.report or os.path.join(args.work, "dry_run.json")
    if args.per_class < 10:
        parser.error(f"--per-class={args.per_class}: the 10-shot linear probes need at least 10 images per class")
    if args.classes < 2:
        parser.error(f"--classes={args.classes}: need at least 2 classes")
    if args.num_examples > args.classes * args.per_class:
        parser.error(f"--num-examples={args.num_examples} needs at most --classes x --per-class = "
                     f"{args.classes * args.per_class} test images")
    return args


def checkpoint_specs(names, folder, quick):
    """``{name: model spec}`` of the checkpoints ``names``: the table's spec in ``folder`` (full scale), or a tiny
    model of the same preset, ``PRESET:overrides=<folder>/<name>.npz`` (``quick``)."""
    table = {checkpoint.name: checkpoint for checkpoint in reproduce.CHECKPOINTS}
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"checkpoints {unknown} are not in experiments.reproduce.CHECKPOINTS ({', '.join(table)})")
    specs = {}
    for name in names:
        checkpoint = table[name]
        if not quick:
            specs[name] = checkpoint.spec(folder)
            continue
        overrides = dict(QUICK_OVERRIDES[checkpoint.preset])
        for item in filter(None, checkpoint.overrides.split(",")):
            key, _, value = item.partition("=")
            overrides[key] = overrides["hidden_size"] if key == "representation_size" else value
        text = ",".join(f"{key}={value}" for key, value in overrides.items())
        specs[name] = f"{checkpoint.preset}:{text}={os.path.join(folder, name + '.npz')}"
    return specs


def write_checkpoints(specs, seed):
    """Writes a random-weight release ``.npz`` for every spec (``PRESET[:overrides]=file.npz``); returns one row per
    checkpoint: name, file, parameters, MB, seconds."""
    import keras

    from vitcnn_tf.model_specs import parse_model_spec
    from vitcnn_tf.models import get_model, save_npz

    rows = []
    for index, (name, spec) in enumerate(specs.items()):
        start = time.perf_counter()
        parsed = parse_model_spec(spec)
        keras.utils.set_random_seed(seed + index)
        model = get_model(parsed.preset, **parsed.overrides)
        os.makedirs(os.path.dirname(parsed.path) or ".", exist_ok=True)
        save_npz(model, parsed.path)
        rows.append({"name": name, "file": parsed.path, "parameters": int(model.count_params()),
                     "megabytes": os.path.getsize(parsed.path) / 2**20, "seconds": time.perf_counter() - start})
        print(f"  {name:<16} {os.path.basename(parsed.path)}: {rows[-1]['parameters']:,} parameters, "
              f"{rows[-1]['megabytes']:,.0f} MB, {rows[-1]['seconds']:.1f} s", flush=True)
        del model
        keras.backend.clear_session()
        gc.collect()
    return rows


def write_image_folder(root, classes, per_class, seed, size=IMAGE_SIZE):
    """``root/{train,test}/class_<k>/<i>.png``: ``per_class`` ``size`` x ``size`` RGB images per class and split,
    class ``k`` a smooth colour field of its own orientation plus noise; returns the number of files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    count = 0
    for split in ("train", "test"):
        for label in range(classes):
            folder = os.path.join(root, split, f"class_{label}")
            os.makedirs(folder, exist_ok=True)
            angle = np.pi * label / classes
            field = np.cos(angle) * xx + np.sin(angle) * yy
            for index in range(per_class):
                phases = rng.uniform(0, 2 * np.pi, 3)
                image = np.stack([np.sin(3 * field + phase) for phase in phases], axis=-1)
                image = 127.5 * (1 + 0.8 * image + 0.2 * rng.standard_normal(image.shape))
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{index}.png"))
                count += 1
    return count


def reproduce_argv(args, folders, specs, only):
    """The ``experiments.reproduce`` command line of one process (``only``: a stage name, or None for all)."""
    argv = [sys.executable, "-m", "experiments.reproduce", "--preset", "paper", "--checkpoints",
            folders["checkpoints"], "--dataset", "image_folder", "--data-dir", folders["images"], "--num-examples",
            str(args.num_examples), "--out", folders["reproduce"], "--jobs", "1", "--no-progress"]
    if args.quick:
        argv += [item for name, spec in specs.items() for item in ("--model", f"{name}={spec}")]
    if only:
        argv += ["--only", only]
    return argv


def run_measured(argv, log_path):
    """Runs ``argv`` from the repository root, its output into ``log_path``; returns ``(exit status, wall seconds,
    peak RSS in MB)``, the peak of the process and of the children it waited for (``os.wait4``)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(argv) + "\n")
        log.flush()
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024.0


def stage_row(stage, out, status_code, wall, peak_mb, log_path):
    """One row of the table from the stage's ``stage.json`` (written when it finished) and its process."""
    record_path = os.path.join(out, stage, reproduce.STAGE_FILE)
    row = {"stage": stage, "process_seconds": wall, "peak_rss_mb": peak_mb, "exit_status": status_code,
           "log": log_path}
    if os.path.exists(record_path):
        with open(record_path) as handle:
            row.update(status="done", stage_seconds=json.load(handle).get("seconds"))
        return row
    with open(log_path) as handle:
        skipped = [line.strip() for line in handle if line.strip().startswith(f"skip {stage}")]
    row.update(status="skipped" if skipped and status_code == 0 else "failed", stage_seconds=None,
               reason=skipped[0] if skipped else None)
    return row


def print_table(rows):
    print(f"\n{'stage':<32} {'status':<8} {'stage s':>8} {'process s':>10} {'peak RSS MB':>12}")
    for row in rows:
        stage_seconds = "-" if row.get("stage_seconds") is None else f"{row['stage_seconds']:.0f}"
        print(f"{row['stage']:<32} {row['status']:<8} {stage_seconds:>8} {row['process_seconds']:>10.0f} "
              f"{row['peak_rss_mb']:>12,.0f}")


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    folders = {name: os.path.abspath(os.path.join(args.work, name))
               for name in ("checkpoints", "images", "reproduce", "logs")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    names = CHECKPOINT_NAMES + (AUGREG_L16_NAMES if args.augreg_l16 else ())
    specs = checkpoint_specs(names, folders["checkpoints"], args.quick)
    print(f"writing {len(specs)} random-weight checkpoints into {folders['checkpoints']}", flush=True)
    clock = time.perf_counter()
    # In a child process: the stages' peak RSS (os.wait4) would otherwise start from this process's size when it
    # forks them, as a forked child's resident set begins as its parent's.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        checkpoints = pool.submit(write_checkpoints, specs, args.seed).result()
    checkpoint_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    images = write_image_folder(folders["images"], args.classes, args.per_class, args.seed)
    image_seconds = time.perf_counter() - clock
    print(f"wrote {images} {IMAGE_SIZE}x{IMAGE_SIZE} images into {folders['images']} in {image_seconds:.1f} s",
          flush=True)
    stages = [stage.name for stage in reproduce.selected_stages(args.only)]
    rows = []
    for stage in stages:
        log_path = os.path.join(folders["logs"], f"{stage}.log")
        print(f"[{time.perf_counter() - start:6.0f} s] {stage} ...", flush=True)
        status_code, wall, peak = run_measured(reproduce_argv(args, folders, specs, stage), log_path)
        rows.append(stage_row(stage, folders["reproduce"], status_code, wall, peak, log_path))
        print(f"[{time.perf_counter() - start:6.0f} s] {stage}: {rows[-1]['status']}, peak RSS {peak:,.0f} MB",
              flush=True)
    report_log = os.path.join(folders["logs"], "report.log")
    report_status, report_wall, report_peak = run_measured(reproduce_argv(args, folders, specs, args.only),
                                                           report_log)
    with open(report_log) as handle:
        reran = [line.split("]", 1)[0].lstrip("[") for line in handle if "] running: python -m" in line]
    print_table(rows)
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    failed = [row["stage"] for row in rows if row["status"] == "failed"]
    report_html = os.path.join(folders["reproduce"], "report.html")
    summary = {"quick": args.quick, "num_examples": args.num_examples, "classes": args.classes,
               "images_per_class_and_split": args.per_class, "checkpoints": checkpoints,
               "checkpoint_seconds": checkpoint_seconds, "image_seconds": image_seconds, "stages": rows,
               "report_run": {"exit_status": report_status, "seconds": report_wall, "peak_rss_mb": report_peak,
                              "log": report_log, "report": report_html if os.path.exists(report_html) else None,
                              "reran": reran},
               "peak_rss_mb_any_child": children_peak,
               "reproduce_options": reproduce_argv(args, folders, specs, "<stage>")[1:],
               "total_seconds": time.perf_counter() - start}
    atomic_io.write_json(args.report, summary)
    print(f"\ncheckpoints written in {checkpoint_seconds:.0f} s, images in {image_seconds:.1f} s; report run "
          f"(every stage reused) {report_wall:.0f} s, exit status {report_status}; largest peak RSS of any process "
          f"{children_peak:,.0f} MB; total {summary['total_seconds']:.0f} s")
    if reran:
        print(f"the report run ran these stages again (their fingerprint changed, e.g. the code was edited during "
              f"the dry run, or they had failed): {', '.join(reran)}")
    print(f"report: {summary['report_run']['report']}; JSON: {os.path.abspath(args.report)}")
    if failed:
        print(f"FAILED stages: {', '.join(failed)} (see {folders['logs']})")
    return 1 if failed or report_status != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
