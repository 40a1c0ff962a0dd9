"""Train (or load from the cache) the CPU-scale model zoo: ``python -m experiments.train --all``.

Each recipe of ``vitcnn_tf.zoo.RECIPES`` is trained on first use and cached under ``--results-dir``
(``<dir>/<recipe>/model.npz`` + ``record.json``); later runs load it unless ``--retrain``. A table of recipe /
test accuracy / train accuracy / training wall and CPU time is printed at the end (the times are those recorded
when the recipe was trained).
"""

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vitcnn_tf import zoo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME",
                        help="a zoo recipe to train or load (repeatable); see --list")
    parser.add_argument("--all", action="store_true", help="every recipe of the zoo")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--results-dir", default=zoo.DEFAULT_RESULTS_DIR,
                        help="cache folder of the zoo (default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="train even when a valid cached entry exists")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir (for tfds recipes)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache of generated data (default: $VITCNN_TF_CACHE or ~/.cache/vitcnn_tf)")
    parser.add_argument("--verbose", default="auto", choices=["auto", "0", "1", "2"],
                        help="Keras fit verbosity: auto (a progress bar on a terminal), 0, 1 or 2")
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

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
    rows = []
    start = time.perf_counter()
    for name in dict.fromkeys(names):
        entry = zoo.load_or_train(name, args.results_dir, retrain=args.retrain, data_dir=args.data_dir,
                                  cache_dir=args.cache_dir, verbose=verbose)
        rows.append((name, entry))
    print(format_table(rows))
    print(f"total wall time of this run: {time.perf_counter() - start:.0f} s")
    return 0


def format_table(rows):
    """A Markdown table of (recipe name, ZooEntry) rows."""
    lines = ["| recipe | train examples | epochs | test accuracy | train accuracy | wall time (s) | CPU time (s) "
             "| status |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, entry in rows:
        record = entry.record
        lines.append(
            f"| {name} | {record['data']['train_examples']} | {record['epochs']} | {record['test_accuracy']:.3f} | "
            f"{record['train_accuracy']:.3f} | {record['wall_time_seconds']:.0f} | {record['cpu_seconds']:.0f} | "
            f"{'trained' if entry.trained else 'cached'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
