"""vitcnn_tf: Do Vision Transformers See Like Convolutional Neural Networks? (Raghu et al., 2021) in TF / Keras 3.

Subpackages:
  metrics           CKA / HSIC: a float64 NumPy reference and compiled TensorFlow ops (``MinibatchCKA``).
  models            ViT, BiT ResNetV2 and MLP-Mixer with every representation tapped; ``load_npz`` / ``save_npz``.
  representations   ``layer_names`` / ``extract`` for our models and any Keras functional model.
  analysis          attention distances, receptive fields, skip norms, localization, linear probes.
"""

__version__ = "0.1.0"
