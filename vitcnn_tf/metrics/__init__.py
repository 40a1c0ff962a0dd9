"""CKA / HSIC: ``reference`` (NumPy float64 ground truth) and ``cka`` (compiled TensorFlow ops, ``MinibatchCKA``).

``cka`` gathers the public names of ``ops`` (the compiled functions), ``minibatch`` (``MinibatchCKA``), with
``checks`` (input validation) and ``precision`` (TensorFloat-32 off for the matrix products) behind them.
"""

from vitcnn_tf.metrics import cka, reference

__all__ = ["cka", "reference"]
