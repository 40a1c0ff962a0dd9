"""``CKAMonitor``: a Keras callback that follows, during ``fit``, the CKA between taps of the training model and a
reference (another model, or the model's own weights when training began) on a fixed probe set."""

import keras
import numpy as np

from vitcnn_tf import representations
from vitcnn_tf.metrics.minibatch import MinibatchCKA


class CKAMonitor(keras.callbacks.Callback):
    """Every ``every`` epochs, the minibatch CKA of each chosen tap of the training model with its reference tap.

    Args:
      probe_images: the fixed probe set, an array ``[m, ...]`` of model inputs (``m >= 4``).
      layers: taps of the training model, as ``representations.select_layers`` takes them (None: all taps; a list
        of names such as ``["block03/+sa"]``; a name or a regular expression).
      reference: None to compare with the model's own weights at ``on_train_begin`` (its probe activations are
        taken then and kept: the same values as a frozen copy of the starting weights, without a second model), or
        another ``keras.Model`` on the same inputs, run on the probe set at each measurement.
      reference_layers: the reference's taps, paired one to one with ``layers`` (the same count); default: the
        same names as ``layers``.
      every: measure after epochs ``every - 1``, ``2 * every - 1``, ... (0-based epoch indices).
      batch_size: probe minibatch size (the last may be smaller, but every one needs 4 examples); default: the
        whole probe set as one minibatch.
      prefix: the log keys are ``"<prefix>/<tap>"``, or ``"<prefix>/<tap>~<reference tap>"`` when the two names
        differ.

    A measurement streams the probe minibatches through both models (``representations.extract``, inference mode)
    into a ``MinibatchCKA`` and takes its diagonal: tap ``i`` against reference tap ``i``, i.e.
    ``reference.minibatch_cka`` of those activations (unbiased HSIC_1 summed over probe minibatches; Nguyen et
    al. 2020). The values go into the epoch's ``logs``, so ``History`` records them (its lists then hold the
    measured epochs only; ``epochs`` lists them) and so does a ``keras.callbacks.TensorBoard`` placed after this
    callback in the list. ``history`` maps each key to its values; a tap constant over the probe set gives NaN.
    """

    def __init__(self, probe_images, layers=None, reference=None, reference_layers=None, every=1, batch_size=None,
                 prefix="cka"):
        super().__init__()
        probe_images = np.asarray(probe_images)
        if probe_images.ndim < 2 or probe_images.shape[0] < 4 or not np.issubdtype(probe_images.dtype, np.floating):
            raise ValueError(f"CKAMonitor: probe_images must be a float array [m, ...] of at least 4 examples, got "
                             f"{probe_images.dtype} of shape {probe_images.shape}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"CKAMonitor: every must be a positive integer (epochs), got {every!r}")
        batch_size = probe_images.shape[0] if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 4:
            raise ValueError(f"CKAMonitor: batch_size must be an integer >= 4, got {batch_size!r}")
        if 0 < probe_images.shape[0] % batch_size < 4:
            raise ValueError(f"CKAMonitor: the last probe minibatch would hold {probe_images.shape[0] % batch_size} "
                             f"examples ({probe_images.shape[0]} with batch_size={batch_size}); every minibatch "
                             f"needs at least 4")
        if reference is not None and not isinstance(reference, keras.Model):
            raise ValueError(f"CKAMonitor: reference must be None (the model's starting weights) or a keras.Model, "
                             f"got {type(reference).__name__}")
        self.probe_batches = [probe_images[start:start + batch_size]
                              for start in range(0, probe_images.shape[0], batch_size)]
        self.layers, self.reference, self.reference_layers = layers, reference, reference_layers
        self.every, self.prefix = int(every), str(prefix)
        self.names, self.reference_names, self.keys = [], [], []
        self.history, self.epochs = {}, []
        self._initial_activations, self._metric = None, None

    def on_train_begin(self, logs=None):
        """Resolves the taps, and takes the starting activations when ``reference`` is None."""
        self.names = representations.select_layers(self.model, self.layers)
        reference_model = self.model if self.reference is None else self.reference
        self.reference_names = representations.select_layers(
            reference_model, self.names if self.reference_layers is None else self.reference_layers)
        if len(self.reference_names) != len(self.names):
            raise ValueError(f"CKAMonitor: {len(self.names)} taps of the model ({self.names}) but "
                             f"{len(self.reference_names)} reference taps ({self.reference_names}); they are paired "
                             f"one to one")
        self.keys = [f"{self.prefix}/{name}" if name == reference_name else
                     f"{self.prefix}/{name}~{reference_name}"
                     for name, reference_name in zip(self.names, self.reference_names)]
        self._initial_activations = None
        if self.reference is None:
            self._initial_activations = [self._activations(self.model, self.reference_names, images)
                                         for images in self.probe_batches]
        self._metric = MinibatchCKA(len(self.names), len(self.reference_names), name="cka_monitor")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        values = self.measure()
        self.epochs.append(epoch)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        if logs is not None:
            logs.update(values)

    def measure(self):
        """The CKA of each tap with its reference tap now: ``{key: float}`` (after ``on_train_begin``)."""
        if self._metric is None:
            raise RuntimeError("CKAMonitor.measure: the taps are resolved in on_train_begin; call it (or fit) first")
        self._metric.reset_state()
        for b, images in enumerate(self.probe_batches):
            xs = self._activations(self.model, self.names, images)
            ys = (self._initial_activations[b] if self._initial_activations is not None
                  else self._activations(self.reference, self.reference_names, images))
            self._metric.update_state(xs, ys)
        values = np.diagonal(self._metric.result().numpy())
        return {key: float(value) for key, value in zip(self.keys, values)}

    @staticmethod
    def _activations(model, names, images):
        """Taps ``names`` of ``model`` on ``images`` -> list of arrays ``[n, ...]``, in the order of ``names``."""
        values = representations.extract(model, images, names)
        return [values[name] for name in names]
