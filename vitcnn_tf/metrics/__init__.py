"""CKA / HSIC: ``reference`` (NumPy float64 ground truth) and ``cka`` (compiled TensorFlow ops, ``MinibatchCKA``).

``cka`` gathers the public names of ``ops`` (the compiled functions), ``minibatch`` (``MinibatchCKA``), with
``checks`` (input validation) and ``precision`` (TensorFloat-32 off for the matrix products) behind them.
For training: ``CKAMonitor`` (``callback``, a callback logging CKA during ``fit``), ``CKALoss`` (``loss``) and
``CKARegularization`` (``layer``), both differentiable linear CKA (``differentiable``).
Beyond CKA (each also in ``reference``): ``procrustes_similarity`` / ``procrustes_matrix`` (``procrustes``),
``mutual_knn`` / ``mutual_knn_matrix`` (``neighbours``) and ``permutation_null`` (``permutation``).
"""

from vitcnn_tf.metrics import cka, reference
from vitcnn_tf.metrics.callback import CKAMonitor
from vitcnn_tf.metrics.layer import CKARegularization
from vitcnn_tf.metrics.loss import CKALoss
from vitcnn_tf.metrics.neighbours import mutual_knn, mutual_knn_matrix
from vitcnn_tf.metrics.permutation import permutation_null
from vitcnn_tf.metrics.procrustes import procrustes_matrix, procrustes_similarity

__all__ = ["cka", "reference", "CKAMonitor", "CKALoss", "CKARegularization", "procrustes_similarity",
           "procrustes_matrix", "mutual_knn", "mutual_knn_matrix", "permutation_null"]
