"""A stand-in experiment module for the orchestration tests of experiments.reproduce (no models, instant).

It follows the experiment-module interface: ``build_parser()``, ``run(options)``. ``run`` writes a result file
and a figure whose content depends only on the options, counts its calls in ``CALLS`` and raises
``KeyboardInterrupt`` when its stage name is in ``INTERRUPT`` (an injected crash), ``RuntimeError`` when
in ``FAIL``.
"""

import json
import os

import numpy as np
from matplotlib.figure import Figure

from experiments import common
from vitcnn_tf import atomic_io
from vitcnn_tf.findings import Finding

CALLS = []
INTERRUPT = set()
FAIL = set()


def build_parser():
    parser = common.new_parser(__doc__, "fake")
    common.add_common_arguments(parser, default_models=[], default_num_examples=64, default_out="unused")
    return parser


def run(options):
    stage = os.path.basename(options.out)
    CALLS.append(stage)
    rng = np.random.default_rng([options.num_examples, len(stage)])
    samples = rng.normal(loc=len(stage) % 3 - 1, size=options.num_examples)
    half_width = 1.96 * samples.std() / np.sqrt(samples.size)
    atomic_io.write_json(os.path.join(options.out, "result.json"), {"mean": samples.mean()})
    if stage in INTERRUPT:
        raise KeyboardInterrupt(f"injected interruption in {stage}")
    if stage in FAIL:
        raise RuntimeError(f"injected failure in {stage}")
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot(samples[:10])
    atomic_io.save_figure(figure, os.path.join(options.out, "samples.png"))
    finding = Finding(f"{stage}_mean_positive", "4", f"{stage}: the mean is positive", "sample mean",
                      samples.mean(), samples.mean() - half_width, samples.mean() + half_width)
    return {"findings": [finding.to_dict()], "mean": json.loads(json.dumps(samples.mean()))}
