"""Reproduce the paper: train (or reuse) the models, run every experiment of Sections 4 to 8, write a report.

    python -m experiments.reproduce                         # CPU preset: the embedded zoo, offline, < 30 min
    python -m experiments.reproduce --only sec4,sec6        # a subset of the stages (prefixes of stage names)
    python -m experiments.reproduce --preset paper --checkpoints ckpt/ --dataset imagenet2012 --data-dir ~/tfds

The work: the zoo models the stages use that are not cached yet (CPU preset only; each cached under
``--zoo-dir`` as ``python -m experiments.train`` does), and one stage per experiment module
(``sec4_representation_structure`` ... ``sec8_data_scale``). They run in ``--jobs`` single-threaded worker
processes (default: one per CPU for the CPU preset; ``vitcnn_tf.parallel``), each stage as soon as its models are
trained, the longest jobs first; ``--jobs 1`` runs everything in this process with progress bars. Each stage writes
into ``<out>/<stage>/`` and finishes by writing ``<out>/<stage>/stage.json`` (atomically) with a fingerprint of
everything that affects it: its options, the identity of its models (zoo recipe fingerprints and weight hashes,
checkpoint hashes), the dataset, and its code (the stage module, the ``experiments`` helpers it imports and the
``vitcnn_tf`` package). A stage whose ``stage.json`` fingerprint matches is not run again, so an interrupted run
resumes where it stopped and a changed setting reruns exactly the stages it affects.

Outputs: every stage's data files and figures, ``findings.json``, ``report.md`` and a self-contained
``report.html`` (figures embedded) with one section per paper section and the findings table: for each finding
the measured quantity, its value with a bootstrap 95% interval, and the verdict holds / does not hold /
inconclusive.

``--preset paper`` names the paper's models (ViT-B/16, ViT-L/16, BiT-R50x1, Mixer-B/16, ImageNet-21k
pre-training) and expects their published ``.npz`` files in ``--checkpoints`` (nothing is downloaded); stages that
need models without public checkpoints (no-skip ViTs, data fractions) are skipped and say so in the report.
``--strategy mirrored|tpu|multiworker`` runs representation extraction and CKA accumulation under that
``tf.distribute`` strategy.
"""

import argparse
import ast
import base64
import dataclasses
import hashlib
import html
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback

from experiments import common  # noqa: E402
from vitcnn_tf import atomic_io  # noqa: E402
from vitcnn_tf import findings as findings_lib  # noqa: E402
from vitcnn_tf import training  # noqa: E402

STAGE_FILE = "stage.json"
_NOT_AFFECTING_RESULTS = ("out", "progress")  # options left out of a stage's fingerprint
STAGE_FORMAT = 1
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Stage:
    """One experiment module run as a stage; ``paper_models`` None means: not available with public checkpoints."""

    name: str
    section: str
    title: str
    paper_models: tuple | None
    module: str = ""  # the module with build_parser() / run(options); default experiments.<name>
    expected_seconds: float = 60.0  # single-threaded run time on the CPU zoo, to schedule long stages first

    def load(self):
        return importlib.import_module(self.module or f"experiments.{self.name}")


# Paper-preset model specs: PRESET[:overrides]=<checkpoint file name>, the file looked up in --checkpoints.
_VIT_B16 = "ViT-B/16:representation_size=768,num_classes=21843=ViT-B_16.npz"
_VIT_L16 = "ViT-L/16:representation_size=1024,num_classes=21843=ViT-L_16.npz"
_BIT_R50 = "BiT-R50x1:num_classes=21843=BiT-M-R50x1.npz"
_MIXER_B16 = "Mixer-B/16:num_classes=21843=Mixer-B_16.npz"

STAGES = (
    Stage("sec4_representation_structure", "4", "Representation structure (Figures 1, 2)",
          (_VIT_B16, _VIT_L16, _BIT_R50, _MIXER_B16), expected_seconds=50),
    Stage("sec5_attention_distance", "5", "Attention distances (Figures 3, 4)", None, expected_seconds=30),
    Stage("sec5_local_global_heads", "5", "Local and global heads vs ResNet (Figure 5)", (_VIT_B16, _BIT_R50),
          expected_seconds=55),
    Stage("sec5_receptive_fields", "5", "Effective receptive fields (Figure 6)", (_VIT_B16, _BIT_R50),
          expected_seconds=115),
    Stage("sec6_skip_connections", "6", "Skip connections (Figures 7, 8)", None, expected_seconds=65),
    Stage("sec7_localization", "7", "Localization (Figures 9, 10)", None, expected_seconds=45),
    Stage("sec7_linear_probes", "7", "Linear probes (Figure 11)", None, expected_seconds=45),
    Stage("sec8_data_scale", "8", "Effects of data scale (Figures 12, 13)", None, expected_seconds=185),
)
SECTION_TITLES = {
    "4": "Section 4: Representation structure of ViTs and convolutional networks",
    "5": "Section 5: Local and global information in layer representations",
    "6": "Section 6: Representation propagation through skip connections",
    "7": "Section 7: Spatial information and localization",
    "8": "Section 8: Effects of scale on transfer learning",
}
PRESETS = ("cpu", "paper")


def build_parser():
    parser = common.new_parser(__doc__, "python -m experiments.reproduce")
    parser.add_argument("--only", default=None,
                        help="comma-separated stages to run (prefixes allowed, e.g. sec5,sec7_loc); default all")
    parser.add_argument("--out", default=os.path.join("results", "reproduce"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--dataset", default=None, help="evaluation dataset (default: shapes10; paper: imagenet2012)")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir / image folder root")
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help="cpu: the embedded zoo (default); paper: "
                        "the paper's models from --checkpoints")
    parser.add_argument("--checkpoints", default=None, help="folder of the published .npz files (--preset paper)")
    parser.add_argument("--zoo-dir", default=common.DEFAULT_ZOO_DIR, help="cache of the CPU zoo (default: %(default)s)")
    parser.add_argument("--strategy", choices=common.STRATEGIES, default="none",
                        help="tf.distribute strategy for extraction and CKA accumulation (default: none)")
    parser.add_argument("--num-examples", type=int, default=None, help="override every stage's example count")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes running zoo trainings and stages at once, one thread each (default: "
                             "one per CPU with --preset cpu and no --strategy, else 1: in this process)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def selected_stages(only):
    """The stages named by ``--only`` (comma-separated names or unique prefixes), in pipeline order."""
    if not only:
        return list(STAGES)
    chosen = set()
    for token in filter(None, (t.strip() for t in only.split(","))):
        matches = [stage.name for stage in STAGES if stage.name.startswith(token)]
        if not matches:
            raise ValueError(f"--only: {token!r} names no stage; stages are {', '.join(s.name for s in STAGES)}")
        chosen.update(matches)
    return [stage for stage in STAGES if stage.name in chosen]


def stage_argv(stage, args):
    """The experiment module's command line for ``stage`` under the reproduce ``args`` (None: stage skipped)."""
    argv = ["--out", os.path.join(args.out, stage.name), "--zoo-dir", args.zoo_dir]
    dataset = args.dataset or ("imagenet2012" if args.preset == "paper" else None)
    if dataset:
        argv += ["--dataset", dataset]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.num_examples:
        argv += ["--num-examples", str(args.num_examples)]
    if not args.progress:
        argv.append("--no-progress")
    if args.strategy != "none":
        argv += ["--strategy", args.strategy]
    if args.preset == "paper":
        if stage.paper_models is None:
            return None
        argv += ["--models", *(_checkpoint_spec(spec, args.checkpoints) for spec in stage.paper_models)]
    return argv


def stage_fingerprint(module, options):
    """sha256 of the stage's options and of the identity of its models and code (:func:`code_files`)."""
    settings = {key: value for key, value in vars(options).items() if key not in _NOT_AFFECTING_RESULTS}
    parts = {"format": STAGE_FORMAT, "module": module.__name__, "options": json.dumps(settings, sort_keys=True,
                                                                                       default=str),
             "models": [_model_identity(spec, options) for spec in common.model_specs(options)],
             "code": {os.path.relpath(path, _PROJECT_ROOT): training.sha256_file(path)
                      for path in code_files(module.__name__)}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


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


def finished_summary(stage_dir, fingerprint):
    """The stored summary of a finished stage with this fingerprint, else None."""
    try:
        with open(os.path.join(stage_dir, STAGE_FILE)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    return record.get("summary")


def run_stage(stage, args, log=print):
    """Runs (or reuses) one stage; returns its record ``{stage, status, seconds, summary}``."""
    argv = stage_argv(stage, args)
    if argv is None:
        return {"stage": stage.name, "status": "skipped (no public checkpoints for its models)", "seconds": 0.0,
                "summary": {"findings": []}}
    module = stage.load()
    options = module.build_parser().parse_args(argv)
    fingerprint = stage_fingerprint(module, options)
    summary = finished_summary(options.out, fingerprint)
    if summary is not None:
        log(f"[{stage.name}] up to date, reusing {options.out}")
        return {"stage": stage.name, "status": "cached", "seconds": 0.0, "summary": summary}
    log(f"[{stage.name}] running: python -m experiments.{stage.name} {' '.join(argv)}")
    start = time.perf_counter()
    try:
        summary = module.run(options)
    except Exception:  # noqa: BLE001 (one failed stage must not lose the others; the traceback is shown)
        traceback.print_exc()
        log(f"[{stage.name}] FAILED; the other stages go on, and a rerun retries this one")
        return {"stage": stage.name, "status": "failed", "seconds": time.perf_counter() - start,
                "summary": {"findings": []}}
    seconds = time.perf_counter() - start
    atomic_io.write_json(os.path.join(options.out, STAGE_FILE),
                         {"fingerprint": fingerprint, "seconds": seconds, "summary": summary})
    log(f"[{stage.name}] done in {seconds:.0f} s")
    return {"stage": stage.name, "status": "ran", "seconds": seconds, "summary": summary}


def stage_recipes(stage):
    """The zoo recipes a CPU-preset stage uses (those of its default ``--models`` and ``--seed-replicates``)."""
    from vitcnn_tf import zoo

    return [spec for spec in common.model_specs(stage.load().build_parser().parse_args([])) if spec in zoo.RECIPES]


def run_pipeline(args, stages, log=print):
    """Trains the missing zoo models (CPU preset) and runs ``stages`` in ``args.jobs`` worker processes, each stage
    as soon as its models are ready; returns ``(stage records in pipeline order, zoo rows)``."""
    from vitcnn_tf import parallel, zoo

    workers = args.jobs
    tasks, zoo_rows = [], []
    recipes_of = {stage.name: stage_recipes(stage) if args.preset == "cpu" else [] for stage in stages}
    needed = list(dict.fromkeys(recipe for recipes in recipes_of.values() for recipe in recipes))
    if needed:
        verbose = "auto" if workers == 1 and args.progress else 0  # Keras progress bars in this process only
        tasks += [zoo.training_task(recipe, args.zoo_dir, data_dir=args.data_dir, verbose=verbose,
                                    name=f"zoo/{recipe}")
                  for recipe in needed if zoo.cached_record(recipe, args.zoo_dir) is None]
    trainings = {task.name for task in tasks}  # names of the zoo tasks of this run
    stage_args = args if workers == 1 else argparse.Namespace(**{**vars(args), "progress": False})
    tasks += [parallel.Task(stage.name, run_stage, (stage, stage_args),
                            after=tuple(f"zoo/{r}" for r in recipes_of[stage.name] if f"zoo/{r}" in trainings),
                            cost=stage.expected_seconds) for stage in stages]
    start = time.perf_counter()

    def started(task):
        if task.name in trainings:
            log(f"[{time.perf_counter() - start:5.0f} s] [{task.name}] training")

    def done(task, result):
        if task.name in trainings:
            log(f"[{time.perf_counter() - start:5.0f} s] [{task.name}] trained in {result['wall_time_seconds']:.0f} s, "
                f"test accuracy {result['test_accuracy']:.3f}")

    try:
        results = parallel.run_tasks(tasks, num_workers=workers, on_start=started, on_done=done)
    except parallel.TasksFailed as failure:
        results = failure.results
        for name, text in failure.failures.items():
            log(f"[{name}] FAILED:\n{text}")
    records = [results.get(stage.name) or {"stage": stage.name, "status": "failed", "seconds": 0.0,
                                           "summary": {"findings": []}} for stage in stages]
    for recipe in needed:
        record = zoo.cached_record(recipe, args.zoo_dir)
        if record is not None:
            zoo_rows.append({"recipe": recipe, "status": "trained" if f"zoo/{recipe}" in results else "cached",
                             "test_accuracy": record["test_accuracy"], "train_seconds": record["wall_time_seconds"]})
    return records, zoo_rows


def write_report(out, stage_records, zoo_rows):
    """Writes ``findings.json``, ``report.md`` and ``report.html`` into ``out``; returns the findings."""
    found = [findings_lib.Finding.from_dict(item) for record in stage_records
             for item in record["summary"].get("findings", [])]
    atomic_io.write_json(os.path.join(out, "findings.json"), [finding.to_dict() for finding in found])
    markdown = _report_markdown(out, stage_records, zoo_rows, found)
    with atomic_io.atomic_open(os.path.join(out, "report.md"), "w") as handle:
        handle.write(markdown)
    with atomic_io.atomic_open(os.path.join(out, "report.html"), "w") as handle:
        handle.write(_report_html(out, stage_records, zoo_rows, found))
    return found


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.jobs is None:
        from vitcnn_tf import parallel

        args.jobs = parallel.default_num_workers() if args.preset == "cpu" and args.strategy == "none" else 1
    if args.preset == "paper" and not args.checkpoints:
        build_parser().error("--preset paper needs --checkpoints DIR with the published .npz files")
    if args.jobs < 1:
        build_parser().error(f"--jobs must be >= 1, got {args.jobs}")
    stages = selected_stages(args.only)
    if args.preset == "paper":  # every checkpoint file must be there before any work starts
        for stage in stages:
            for spec in stage.paper_models or ():
                _checkpoint_spec(spec, args.checkpoints)
    start = time.perf_counter()
    records, zoo_rows = run_pipeline(args, stages)
    found = write_report(args.out, records, zoo_rows)
    print(_one_screen_summary(records, found, time.perf_counter() - start, args.out))
    return 1 if any(record["status"] == "failed" for record in records) else 0


def _one_screen_summary(records, found, seconds, out):
    lines = ["", "stage                               status   seconds"]
    lines += [f"{r['stage']:<35} {r['status'][:8]:<8} {r['seconds']:7.0f}" for r in records]
    counts = {verdict: sum(f.verdict == verdict for f in found)
              for verdict in (findings_lib.HOLDS, findings_lib.DOES_NOT_HOLD, findings_lib.INCONCLUSIVE)}
    lines.append("")
    lines += [f"{f.verdict:<14} {f.key}: {f.value:.3g} [{f.low:.3g}, {f.high:.3g}]" for f in found]
    lines.append(f"\nfindings: {counts[findings_lib.HOLDS]} hold, {counts[findings_lib.DOES_NOT_HOLD]} do not hold, "
                 f"{counts[findings_lib.INCONCLUSIVE]} inconclusive; total {seconds:.0f} s")
    lines.append(f"report: {os.path.join(os.path.abspath(out), 'report.html')}")
    return "\n".join(lines)


def _report_markdown(out, records, zoo_rows, found):
    lines = ["# Do Vision Transformers See Like CNNs? Reproduction report", "",
             "Generated by `python -m experiments.reproduce`. Intervals are bootstrap 95% intervals; a verdict "
             "*holds* when the whole interval is on the claimed side of the threshold, *does not hold* when it is "
             "on the other side, else *inconclusive*.", "", "## Findings", "", findings_lib.findings_table(found), ""]
    if zoo_rows:
        lines += ["## Models (CPU zoo)", "", "| recipe | test accuracy | train time (s) | status |",
                  "| --- | ---: | ---: | --- |"]
        lines += [f"| {r['recipe']} | {r['test_accuracy']:.3f} | {r['train_seconds']:.0f} | {r['status']} |"
                  for r in zoo_rows]
        lines.append("")
    for title, section_records in _sections(records):
        lines += [f"## {title}", ""]
        for stage, record in section_records:
            lines += [f"### {stage.title}", "", f"Stage `{stage.name}`: {record['status']}.", ""]
            lines += [f"- **{f['key']}** ({findings_lib.Finding.from_dict(f).verdict}): {f['quantity']}"
                      for f in record["summary"].get("findings", [])]
            lines.append("")
            lines += [f"![{name}]({stage.name}/{name})" for name in _figures(out, stage.name)]
            lines.append("")
    return "\n".join(lines)


def _report_html(out, records, zoo_rows, found):
    def table(markdown_table):
        rows = [row.strip("|").split(" | ") for row in markdown_table.splitlines() if not row.startswith("| ---")]
        cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{_inline(c.strip())}</{'th' if i == 0 else 'td'}>"
                                  for c in row) + "</tr>" for i, row in enumerate(rows)]
        return "<table>" + "".join(cells) + "</table>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vitcnn_tf reproduction report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:90%}img{max-width:100%}</style></head><body>",
             "<h1>Do Vision Transformers See Like CNNs? Reproduction report</h1>",
             "<p>Intervals are bootstrap 95% intervals; a verdict <em>holds</em> when the whole interval is on the "
             "claimed side of the threshold, <em>does not hold</em> when it is on the other side, else "
             "<em>inconclusive</em>.</p><h2>Findings</h2>", table(findings_lib.findings_table(found))]
    if zoo_rows:
        parts.append("<h2>Models (CPU zoo)</h2><table><tr><th>recipe</th><th>test accuracy</th><th>train time (s)"
                     "</th><th>status</th></tr>")
        parts += [f"<tr><td>{html.escape(r['recipe'])}</td><td>{r['test_accuracy']:.3f}</td>"
                  f"<td>{r['train_seconds']:.0f}</td><td>{r['status']}</td></tr>" for r in zoo_rows]
        parts.append("</table>")
    for title, section_records in _sections(records):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for stage, record in section_records:
            parts.append(f"<h3>{html.escape(stage.title)}</h3><p>Stage <code>{stage.name}</code>: "
                         f"{html.escape(record['status'])}.</p><ul>")
            parts += [f"<li><b>{html.escape(f['key'])}</b>: {html.escape(f['quantity'])}</li>"
                      for f in record["summary"].get("findings", [])]
            parts.append("</ul>")
            for name in _figures(out, stage.name):
                with open(os.path.join(out, stage.name, name), "rb") as handle:
                    encoded = base64.b64encode(handle.read()).decode("ascii")
                parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
                             f"<figcaption>{html.escape(name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _sections(records):
    """``(section title, [(stage, record), ...])`` for each paper section with at least one stage record."""
    by_name = {stage.name: stage for stage in STAGES}
    for section, title in SECTION_TITLES.items():
        pairs = [(by_name[record["stage"]], record) for record in records
                 if by_name[record["stage"]].section == section]
        if pairs:
            yield title, pairs


def _inline(text):
    text = html.escape(text)
    while "**" in text:
        text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
    return text


def _figures(out, stage_name):
    folder = os.path.join(out, stage_name)
    return sorted(name for name in os.listdir(folder) if name.endswith(".png")) if os.path.isdir(folder) else []


def _checkpoint_spec(spec, folder):
    preset, filename = spec.rsplit("=", 1)
    path = os.path.join(folder, filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoints: expected the published checkpoint {filename} for {preset} in "
                                f"{folder!r} (not found; nothing is downloaded)")
    return f"{preset}={path}"


def _model_identity(spec, options):
    """What identifies a model spec's weights: a zoo recipe's fingerprint + weights hash, or a file's hash."""
    if "=" in spec and spec.endswith(".npz"):
        return {"spec": spec, "sha256": training.sha256_file(spec.rsplit("=", 1)[1])}
    if spec.endswith(".keras"):
        return {"spec": spec, "sha256": training.sha256_file(spec)}
    from vitcnn_tf import zoo

    record = zoo.cached_record(spec, options.zoo_dir) or {}
    return {"spec": spec, "recipe": zoo.get_recipe(spec).fingerprint(), "weights": record.get("weights_sha256")}



if __name__ == "__main__":
    sys.exit(main())
