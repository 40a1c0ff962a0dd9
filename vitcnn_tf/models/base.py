"""``TappedModel``: the base of the functional models, with a config dataclass, ordered taps and the checkpoint
protocol of ``vitcnn_tf.models.checkpoint``."""

import dataclasses
import types

import keras


class TappedModel(keras.Model):
    """Base of the functional models: a config dataclass, ordered taps and the checkpoint protocol defaults.

    Subclasses set ``config_class``, build the graph from ``inputs`` and call
    ``super().__init__(config, inputs, taps)`` with ``taps`` an ordered dict ending with ``"logits"``, and
    define ``checkpoint_layout()``: the family's table of ``(release key, layer name, weight attribute)`` rows
    (``vitcnn_tf.models.checkpoint_keys``) from which ``checkpoint_variables()`` follows.
    """

    config_class = None

    def __init__(self, config, inputs, taps, **kwargs):
        super().__init__(inputs=inputs, outputs=taps["logits"], **kwargs)
        self.config = config
        self._taps = types.MappingProxyType(taps)

    @classmethod
    def coerce_config(cls, config):
        """``config`` as a ``cls.config_class`` (a dict of its fields is accepted, as in ``from_config``)."""
        if isinstance(config, dict):
            config = cls.config_class(**config)
        if not isinstance(config, cls.config_class):
            raise TypeError(f"{cls.__name__}: config must be a {cls.config_class.__name__} or a dict of its "
                            f"fields, got {type(config).__name__}")
        return config

    @property
    def taps(self):
        """Ordered dict {tap name -> symbolic tensor of the graph}, in forward order."""
        return dict(self._taps)

    def checkpoint_layout(self):
        """``[(release .npz key, layer name, weight attribute)]``: which layer weight each release array fills."""
        raise NotImplementedError(f"{type(self).__name__} must define checkpoint_layout()")

    def checkpoint_variables(self):
        """{release ``.npz`` key -> variable}, from ``checkpoint_layout()``; each variable has the release array's
        shape."""
        return {key: getattr(self.get_layer(layer), attribute) for key, layer, attribute in self.checkpoint_layout()}

    @property
    def checkpoint_head_keys(self):
        """Release keys of the classifier head (skipped with a warning on a class-count mismatch)."""
        return ("head/kernel", "head/bias")

    def adapt_checkpoint_array(self, key, array):
        """Adapts a checkpoint array to this model before its shape is checked; identity by default."""
        return array

    def get_config(self):
        return {"config": dataclasses.asdict(self.config), "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(config.pop("config"), **config)
