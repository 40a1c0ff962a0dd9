"""CKA demo: a within-model minibatch CKA heatmap of a random deep ReLU network on random data.

Streams ``--batches`` minibatches of random inputs through a randomly initialised Keras MLP, feeds every layer's
activations to ``vitcnn_tf.metrics.cka.MinibatchCKA``, checks the heatmap against the NumPy float64 reference
``vitcnn_tf.metrics.reference.minibatch_cka``, prints a short table and writes ``cka.npz`` and ``cka.png`` to
``--out`` (atomically). A failed check exits with status 1.

    python -m experiments.cka_demo                      # 12 layers, 8 minibatches of 64, results/cka_demo
    python -m experiments.cka_demo --layers 24 --out /tmp/cka
"""

import os
import sys

from experiments import common  # first: imports TensorFlow quietly

import keras  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vitcnn_tf import atomic_io  # noqa: E402
from vitcnn_tf.metrics import cka, reference  # noqa: E402

TOLERANCE = 1e-4  # float32 activations: Gram matrices in float32, everything after in float64


def parse_args(argv=None):
    parser = common.new_parser(__doc__, "python -m experiments.cka_demo")
    parser.add_argument("--out", default="results/cka_demo", help="output folder (default results/cka_demo)")
    parser.add_argument("--layers", type=int, default=12, help="number of hidden ReLU layers (default 12)")
    parser.add_argument("--width", type=int, default=128, help="width of the hidden layers (default 128)")
    parser.add_argument("--input-dim", type=int, default=32, help="dimension of the random inputs (default 32)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per minibatch, >= 4 (default 64)")
    parser.add_argument("--batches", type=int, default=8, help="number of minibatches (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default 0)")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.width < 1 or args.input_dim < 1 or args.batches < 1 or args.batch_size < 4:
        parser.error("need --layers, --width, --input-dim, --batches >= 1 and --batch-size >= 4")
    return args


def random_relu_network(input_dim, width, num_layers, seed):
    """A Keras MLP with He-initialised ReLU layers, returning every layer's activations ``[n, width]``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,))
    hidden, outputs = inputs, []
    for i in range(num_layers):
        hidden = keras.layers.Dense(width, activation="relu", kernel_initializer="he_normal",
                                    bias_initializer=keras.initializers.RandomNormal(stddev=0.1),
                                    name=f"relu{i:02d}")(hidden)
        outputs.append(hidden)
    return keras.Model(inputs, outputs, name="random_relu_mlp")


def heatmap_figure(matrix, names):
    figure = Figure(figsize=(6, 5), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, origin="lower", cmap="magma", vmin=0.0, vmax=1.0)
    ticks = np.arange(0, len(names), max(1, len(names) // 8))
    axes.set_xticks(ticks, [names[t] for t in ticks], rotation=45, ha="right")
    axes.set_yticks(ticks, [names[t] for t in ticks])
    axes.set_title("Minibatch CKA between layers of a random ReLU MLP")
    figure.colorbar(image, ax=axes, label="CKA")
    return figure


def main(argv=None):
    args = parse_args(argv)
    model = random_relu_network(args.input_dim, args.width, args.layers, args.seed)
    names = [layer.name for layer in model.layers[1:]]
    metric = cka.MinibatchCKA(len(names))
    rng = np.random.default_rng(args.seed)
    activations = []
    progress = keras.utils.Progbar(args.batches, unit_name="minibatch")
    for step in range(args.batches):
        images = rng.standard_normal((args.batch_size, args.input_dim)).astype(np.float32)
        layers = model(images, training=False)
        metric.update_state(layers)
        activations.append([np.asarray(x) for x in layers])
        progress.update(step + 1)

    heatmap = metric.result().numpy()
    expected = reference.minibatch_cka(activations)
    difference = float(np.max(np.abs(heatmap - expected)))
    print(f"\n{len(names)} layers x {args.batches} minibatches of {args.batch_size}: "
          f"max |MinibatchCKA - reference| = {difference:.1e} (tolerance {TOLERANCE:g})")
    print(f"{'layer':>8} {'CKA with ' + names[0]:>16} {'CKA with ' + names[-1]:>16} {'with next layer':>16}")
    for i, name in enumerate(names):
        following = f"{heatmap[i, i + 1]:16.3f}" if i + 1 < len(names) else f"{'':16}"
        print(f"{name:>8} {heatmap[i, 0]:16.3f} {heatmap[i, -1]:16.3f} {following}")

    os.makedirs(args.out, exist_ok=True)
    atomic_io.save_npz(os.path.join(args.out, "cka.npz"), cka=heatmap, reference=expected, layers=np.array(names),
                       batch_size=args.batch_size, batches=args.batches, seed=args.seed)
    atomic_io.save_figure(heatmap_figure(heatmap, names), os.path.join(args.out, "cka.png"), dpi=120)
    print(f"wrote {os.path.join(args.out, 'cka.npz')} and {os.path.join(args.out, 'cka.png')}")
    if not difference <= TOLERANCE:
        print(f"FAILED: MinibatchCKA differs from the reference by {difference:.1e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
