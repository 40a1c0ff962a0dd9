"""``CKALoss``: one minus the linear CKA of two representations of one minibatch, as a ``keras.losses.Loss``."""

import keras

from vitcnn_tf.metrics import differentiable


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class CKALoss(keras.losses.Loss):
    """``1 - CKA(y_true, y_pred)`` for ``y_true`` ``[n, ...]`` and ``y_pred`` ``[n, ...]`` of the same ``n`` examples.

    For distillation (``y_true`` a teacher's representation of the batch, ``y_pred`` the student's) or for
    matching any target representation: ``model.compile(loss=CKALoss())``. CKA compares whole minibatches, so
    the loss is one scalar per batch (its ``reduction`` has nothing to reduce) and ``sample_weight`` is refused;
    the feature sizes of ``y_true`` and ``y_pred`` may differ. Computed by ``differentiable.linear_cka`` in the
    loss's ``dtype`` (float32 by default, the Keras ``floatx``; ``dtype="float64"`` for the precise value):
    features centred over the batch, biased HSIC, or Song et al.'s unbiased HSIC_1 with ``unbiased=True``
    (``n >= 4``). A batch in which either representation is constant gives loss 1 with a zero gradient.
    Under a ``tf.distribute`` strategy each replica's loss is the CKA of its own share of the batch.
    """

    def __init__(self, unbiased=False, name="cka_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.unbiased = bool(unbiased)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__}: sample_weight is not supported: CKA compares the whole "
                             f"minibatch, so there is no per-example loss to weight")
        return super().__call__(y_true, y_pred)

    def call(self, y_true, y_pred):
        """``y_true`` ``[n, ...]``, ``y_pred`` ``[n, ...]`` -> scalar ``1 - CKA``."""
        return 1.0 - differentiable.linear_cka(y_true, y_pred, self.unbiased, self.dtype, type(self).__name__)

    def get_config(self):
        config = super().get_config()
        config.update(unbiased=self.unbiased, dtype=self.dtype)
        return config
