"""vitcnn_tf: Do Vision Transformers See Like Convolutional Neural Networks? (Raghu et al., 2021) in TF / Keras 3.

Subpackages:
  metrics           CKA / HSIC: a float64 NumPy reference and compiled TensorFlow ops (``MinibatchCKA``).
  models            ViT, BiT ResNetV2 and MLP-Mixer with every representation tapped; ``load_npz`` / ``save_npz``.
  representations   ``layer_names`` / ``extract`` for our models and any Keras functional model.
  analysis          attention distances, receptive fields, skip norms, localization, linear probes, bootstrap.
  findings          the paper's claims with measured values, 95% intervals and verdicts.
  data              tf.data pipelines: embedded shapes10, digits, tensorflow-datasets, image folders; subsets.
  training, zoo     the training loop and the cached CPU-scale model zoo.
  plotting          matplotlib figures (CKA heatmaps, line plots, image grids).
  atomic_io         atomic result files.
  runtime, parallel TensorFlow environment defaults and thread limits; jobs in single-threaded worker processes.
"""

__version__ = "0.1.0"
