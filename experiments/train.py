"""Train (or load from the cache) the CPU-scale model zoo: ``python -m experiments.train --all``.

Each recipe of ``vitcnn_tf.zoo.RECIPES`` is trained on first use and cached under ``--results-dir`` (default
``results/zoo``; ``<dir>/<recipe>/model.npz`` + ``record.json``); later runs reuse it unless ``--retrain``.
``--ship`` then copies the verified entries into the package's shipped zoo (``vitcnn_tf.zoo.ship``):
``python -m experiments.train --all --results-dir DIR --ship`` makes the zoo that ships. Missing recipes train
in ``--jobs`` single-threaded worker processes (default: one per CPU), the longest first, with a line per finished
recipe; ``--jobs 1`` trains in this process with one progress bar per training (the time left included). A table
of recipe / test accuracy / train accuracy / training wall and CPU time is printed at the end (the times are those
recorded when the recipe was trained).
"""

import sys
import time

from experiments import common
from vitcnn_tf import parallel, zoo  # noqa: E402


def main(argv=None):
    parser = common.new_parser(__doc__, "python -m experiments.train")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME",
                        help="a zoo recipe to train or load (repeatable); see --list")
    parser.add_argument("--all", action="store_true", help="every recipe of the zoo")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--results-dir", default=None,
                        help=f"cache folder of the zoo (default: {zoo.DEFAULT_TRAIN_DIR})")
    parser.add_argument("--ship", action="store_true",
                        help="then copy the recipes' verified entries from --results-dir (required) into the "
                             "package's shipped zoo")
    parser.add_argument("--retrain", action="store_true", help="train even when a valid cached entry exists")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir (for tfds recipes)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache of generated data (default: $VITCNN_TF_CACHE or ~/.cache/vitcnn_tf)")
    parser.add_argument("--jobs", type=int, default=parallel.default_num_workers(),
                        help="worker processes training at once (default: one per CPU, %(default)s here)")
    args = parser.parse_args(argv)

    if args.list:
        width = max(len(name) for name in zoo.RECIPES)
        for name, recipe in zoo.RECIPES.items():
            print(f"{name:<{width}}  {recipe.description}")
        return 0
    names = list(zoo.RECIPES) if args.all else args.recipe
    if not names:
        parser.error("give --recipe NAME (repeatable), --all or --list")
    unknown = [name for name in names if name not in zoo.RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(zoo.RECIPES)}")

    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.ship and args.results_dir is None:
        parser.error("--ship: give --results-dir DIR, the folder whose trained zoo is shipped")
    results_dir = zoo.DEFAULT_TRAIN_DIR if args.results_dir is None else args.results_dir
    start = time.perf_counter()

    def report(name, record, trained):
        status = f"trained in {record['wall_time_seconds']:.0f} s" if trained else "cached"
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: {status}, test accuracy {record['test_accuracy']:.3f}",
              flush=True)

    outcome = zoo.train_recipes(names, results_dir, num_workers=args.jobs, retrain=args.retrain,
                                data_dir=args.data_dir, cache_dir=args.cache_dir, on_done=report)
    print(format_table([(name, *outcome[name]) for name in outcome]))
    print(f"total wall time of this run: {time.perf_counter() - start:.0f} s")
    if args.ship:
        with common.user_errors(parser):
            zoo.ship(results_dir, names)
        print(f"shipped {len(names)} recipe(s) into {zoo.SHIPPED_DIR} ({zoo.shipped_size_bytes() / 1e6:.1f} MB in "
              "all)")
    return 0


def format_table(rows):
    """A Markdown table of (recipe name, record, trained) rows."""
    lines = ["| recipe | train examples | epochs | test accuracy | train accuracy | wall time (s) | CPU time (s) "
             "| status |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, record, trained in rows:
        lines.append(
            f"| {name} | {record['data']['train_examples']} | {record['epochs']} | {record['test_accuracy']:.3f} | "
            f"{record['train_accuracy']:.3f} | {record['wall_time_seconds']:.0f} | {record['cpu_seconds']:.0f} | "
            f"{'trained' if trained else 'cached'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
