"""``CKARegularization``: a pass-through Keras layer that adds a linear-CKA penalty between two representations."""

import keras
import tensorflow as tf

from vitcnn_tf.metrics import differentiable

OBJECTIVES = ("similarity", "dissimilarity")


@keras.saving.register_keras_serializable(package="vitcnn_tf")
class CKARegularization(keras.layers.Layer):
    """``call([x, y])`` returns ``x`` unchanged and adds a CKA penalty of ``x`` ``[n, ...]`` and ``y`` ``[n, ...]``.

    ``objective="similarity"`` adds ``weight * (1 - CKA(x, y))`` to the model's losses (distillation: ``y`` a
    frozen teacher's representation of the same images pulls ``x`` towards it); ``"dissimilarity"`` adds
    ``weight * CKA(x, y)`` (pushes two representations apart, e.g. ensemble members). The layer sits on the path
    of ``x``, because a functional Keras model calls only the layers between its inputs and its outputs.
    CKA is ``differentiable.linear_cka`` of the batch in the layer's compute dtype (float32 for a float32 or
    mixed-precision policy; ``dtype="float64"`` for the precise value), biased or, with ``unbiased=True``,
    Song et al.'s HSIC_1 (``n >= 4``). ``last_cka`` holds the value of the latest call (graph or eager).
    """

    def __init__(self, weight=1.0, objective="similarity", unbiased=False, **kwargs):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"CKARegularization: objective must be one of {OBJECTIVES}, got {objective!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"CKARegularization: weight must be a non-negative number, got {weight!r}")
        self.weight = float(weight)
        self.objective = objective
        self.unbiased = bool(unbiased)
        compute = "float64" if self.compute_dtype == "float64" else "float32"
        self.last_cka = self.add_weight(shape=(), initializer="zeros", dtype=compute, trainable=False,
                                        aggregation="mean", name="last_cka")

    def call(self, inputs):
        """``inputs = [x, y]`` (``[n, ...]`` each) -> ``x``."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("CKARegularization: call it on [x, y], two representations [n, ...] of the same "
                             f"examples; got {type(inputs).__name__}"
                             f"{f' of {len(inputs)}' if isinstance(inputs, (list, tuple)) else ''}")
        x, y = inputs
        value = differentiable.linear_cka(x, y, self.unbiased, self.last_cka.dtype, "CKARegularization")
        self.last_cka.assign(tf.stop_gradient(value))
        penalty = 1.0 - value if self.objective == "similarity" else value
        self.add_loss(self.weight * penalty)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(weight=self.weight, objective=self.objective, unbiased=self.unbiased)
        return config
