"""CKA and HSIC as compiled TensorFlow ops and the streaming ``MinibatchCKA`` metric: the public names.

The ops live in ``vitcnn_tf.metrics.ops`` (with ``linear_cka_features``, the feature-space variant), the metric
in ``vitcnn_tf.metrics.minibatch``, their input checks in ``vitcnn_tf.metrics.checks``; this module gathers the
public names. Every op and ``MinibatchCKA.update_state`` run their matrix products with TensorFloat-32 off
(``vitcnn_tf.metrics.precision``).
"""

from vitcnn_tf.metrics.minibatch import MinibatchCKA
from vitcnn_tf.metrics.ops import center_gram, cka, gram_linear, gram_rbf, hsic, linear_cka

__all__ = ["gram_linear", "gram_rbf", "center_gram", "hsic", "cka", "linear_cka", "MinibatchCKA"]
