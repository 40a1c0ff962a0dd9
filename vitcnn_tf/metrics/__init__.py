"""CKA / HSIC: ``reference`` (NumPy float64 ground truth) and ``cka`` (compiled TensorFlow ops, ``MinibatchCKA``)."""

from vitcnn_tf.metrics import cka, reference

__all__ = ["cka", "reference"]
