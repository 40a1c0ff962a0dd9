"""Supervised training with Keras ``compile`` / ``fit``: AdamW, linear warm-up + cosine decay, label smoothing,
seed control, Keras' progress bar, optional per-epoch checkpoints, and a JSON record next to the weights.

Output layout of ``fit(..., output_dir=d)``::

    d/model.weights.h5 | d/model.npz     final weights, written atomically: Keras ``save_weights`` format
                                         (``weights_format="keras"``, any Keras model) or the release ``.npz``
                                         of ``vitcnn_tf.models.save_npz`` (``"npz"``, vitcnn_tf ViT / ResNetV2 / Mixer)
    d/record.json                        config, data, seed, epochs, history, accuracies, wall time, and the
                                         weights file's name and sha256
    d/checkpoints/epoch_NNN.<same suffix>    with ``checkpoint_every=k``, after every k-th epoch

The record is written last, so a record whose ``weights_sha256`` matches the weights file marks a complete run.
"""

import dataclasses
import datetime
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from vitcnn_tf import atomic_io
from vitcnn_tf.atomic_io import sha256_file

WEIGHTS_FILES = {"keras": "model.weights.h5", "npz": "model.npz"}
RECORD_FILE = "record.json"
RECORD_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters.

    ``learning_rate`` is the peak, reached linearly from 0 over the first ``warmup_fraction`` of the steps, then
    cosine-decayed to ``learning_rate * final_learning_rate_ratio``. AdamW's ``weight_decay`` is applied to
    variables of rank >= 2 only (not to biases, norm scales / offsets). ``global_clipnorm`` clips the gradient
    norm as the ViT recipes do (``None`` disables it).

    Stopping criterion: ``epochs`` is the most that run. With ``early_stopping_patience=p`` and validation data,
    training stops once the validation accuracy has not beaten its best by more than ``early_stopping_min_delta``
    for ``p`` epochs, and the weights of the last epoch that did (the "best epoch") are kept: a later epoch that
    gains less than the margin does not replace them.
    """

    epochs: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    final_learning_rate_ratio: float = 0.0
    label_smoothing: float = 0.0
    global_clipnorm: float | None = 1.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0

    def __post_init__(self):
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be a positive integer, got {self.epochs!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"TrainConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0.0 <= self.final_learning_rate_ratio <= 1.0:
            raise ValueError("TrainConfig.final_learning_rate_ratio must be in [0, 1], "
                             f"got {self.final_learning_rate_ratio!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.global_clipnorm is not None and not self.global_clipnorm > 0:
            raise ValueError(f"TrainConfig.global_clipnorm must be > 0 or None, got {self.global_clipnorm!r}")
        patience = self.early_stopping_patience
        if patience is not None and (isinstance(patience, bool) or int(patience) != patience or patience < 1):
            raise ValueError("TrainConfig.early_stopping_patience must be a positive integer or None, "
                             f"got {patience!r}")
        if not self.early_stopping_min_delta >= 0:
            raise ValueError("TrainConfig.early_stopping_min_delta must be >= 0, "
                             f"got {self.early_stopping_min_delta!r}")


def learning_rate_schedule(config, total_steps):
    """Linear warm-up from 0 to ``config.learning_rate``, then cosine decay, over ``total_steps`` steps."""
    warmup_steps = int(round(config.warmup_fraction * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.learning_rate,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=config.final_learning_rate_ratio,
        warmup_target=config.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(model, config, total_steps):
    """AdamW on the warm-up + cosine schedule, with rank < 2 variables excluded from weight decay."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(config, total_steps),
        weight_decay=config.weight_decay,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        global_clipnorm=config.global_clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    return optimizer


def fit(model, train_data, test_data=None, config=TrainConfig(), *, seed=0, output_dir=None, train_eval_data=None,
        validation_data=None, record_extra=None, checkpoint_every=0, weights_format="keras", validation_every=None,
        verbose="auto"):
    """Train ``model`` (logits output) on ``train_data`` and return the run's record (a JSON-able dict).

    The record's ``wall_time_seconds`` covers training and the final evaluations, ``cpu_seconds`` the process
    CPU time over the same span (summed over all cores).

    Args:
      model: a Keras model mapping images to logits ``[b, num_classes]``.
      train_data / test_data / train_eval_data: ``tf.data`` datasets of ``(images, int labels)`` batches with
        known cardinality (as :func:`vitcnn_tf.data.load_dataset` returns). The final train accuracy is measured
        on ``train_eval_data`` (e.g. the training split unshuffled and unaugmented) or else on ``train_data``.
      validation_data: a held-out ``tf.data`` set of the same kind, evaluated after every epoch (the curve
        ``val_accuracy`` of the record's history) and watched by the early stopping of ``config``; the test set is
        then evaluated only once, after training. Without it, ``test_data`` is the validation set of the history
        (every ``validation_every`` epochs) and there is no early stopping.
      config: :class:`TrainConfig`.
      seed: ``keras.utils.set_random_seed(seed)`` before compiling (dropout, ...). Seed before building the model
        too for a deterministic initialisation.
      output_dir: where weights, record and checkpoints go (nothing is written when ``None``).
      record_extra: merged into the record (e.g. ``{"data": {...}, "recipe": {...}}``).
      checkpoint_every: save weights every this many epochs under ``output_dir/checkpoints`` (0: never).
      weights_format: ``"keras"`` (``.weights.h5``) or ``"npz"`` (release format, vitcnn_tf models only).
      validation_every: evaluate ``test_data`` after every this many epochs (its history is in the record); the
        default ``ceil(epochs / 3)`` keeps many short epochs (small data subsets) from costing more in
        evaluation than in training. The final test accuracy is measured after training in any case.
      verbose: 0 for silence; otherwise one progress bar for the whole training (:class:`TrainingProgress`:
        steps of every epoch, the time left, loss and accuracy), redrawn in place on a terminal and printed about
        once a minute otherwise (``"auto"``, 1 and 2 alike).
    """
    steps_per_epoch = _num_batches(train_data, "train_data")
    num_classes = int(model.output_shape[-1])
    total_steps = steps_per_epoch * int(config.epochs)
    if weights_format not in WEIGHTS_FILES:
        raise ValueError(f"fit: weights_format must be one of {sorted(WEIGHTS_FILES)}, got {weights_format!r}")
    if validation_every is None:
        validation_every = -(-int(config.epochs) // 3)
    if isinstance(validation_every, bool) or not isinstance(validation_every, int) or validation_every < 1:
        raise ValueError(f"fit: validation_every must be a positive int, got {validation_every!r}")
    if checkpoint_every and output_dir is None:
        raise ValueError("fit: checkpoint_every needs an output_dir")
    if config.early_stopping_patience is not None and validation_data is None:
        raise ValueError("fit: TrainConfig.early_stopping_patience needs validation_data")
    if validation_data is not None:
        validation_every = 1

    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=make_optimizer(model, config, total_steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    callbacks = [TrainingProgress(total_steps)] if verbose else []
    if checkpoint_every:
        callbacks.append(EpochCheckpoint(os.path.join(output_dir, "checkpoints"), checkpoint_every, weights_format))
    stopper = None
    if config.early_stopping_patience is not None:
        stopper = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                patience=int(config.early_stopping_patience),
                                                min_delta=config.early_stopping_min_delta, restore_best_weights=True)
        callbacks.append(stopper)
    watched = validation_data if validation_data is not None else test_data

    start, cpu_start = time.perf_counter(), time.process_time()
    history = model.fit(
        _one_hot(train_data, num_classes),
        validation_data=None if watched is None else _one_hot(watched, num_classes),
        validation_freq=validation_every,
        epochs=int(config.epochs),
        shuffle=False,  # the pipeline shuffles
        callbacks=callbacks,
        verbose=0,
    )
    train_seconds = time.perf_counter() - start
    train_eval = train_data if train_eval_data is None else train_eval_data
    train_loss, train_accuracy = model.evaluate(_one_hot(train_eval, num_classes), verbose=0)
    test_loss = test_accuracy = None
    if test_data is not None:
        test_loss, test_accuracy = model.evaluate(_one_hot(test_data, num_classes), verbose=0)

    record = {
        "format": RECORD_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_class": type(model).__name__,
        "num_parameters": int(model.count_params()),
        "seed": int(seed),
        "epochs": int(config.epochs),
        "epochs_run": len(history.epoch),
        "stopping": _stopping_record(config, stopper, len(history.epoch), validation_data is not None),
        "steps_per_epoch": steps_per_epoch,
        "validation_every": validation_every,
        "training": dataclasses.asdict(config),
        "train_accuracy": float(train_accuracy),
        "train_loss": float(train_loss),
        "test_accuracy": None if test_accuracy is None else float(test_accuracy),
        "test_loss": None if test_loss is None else float(test_loss),
        "train_seconds": round(train_seconds, 2),
        "wall_time_seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "history": {key: [float(value) for value in values] for key, values in history.history.items()},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
    }
    record.update(record_extra or {})
    if output_dir is not None:
        weights_path = os.path.join(output_dir, WEIGHTS_FILES[weights_format])
        save_weights(model, weights_path, weights_format)
        record["weights_file"] = WEIGHTS_FILES[weights_format]
        record["weights_sha256"] = sha256_file(weights_path)
        atomic_io.write_json(os.path.join(output_dir, RECORD_FILE), record)
    return record


def _stopping_record(config, stopper, epochs_run, validated):
    """How training ended: ``{"criterion", "best_epoch" (1-based, the weights kept), "stopped_early"}``."""
    if stopper is None:
        return {"criterion": f"a fixed {config.epochs} epochs", "best_epoch": epochs_run, "stopped_early": False,
                "validation": "held-out split" if validated else "test split"}
    return {
        "criterion": f"at most {config.epochs} epochs; stop when the validation accuracy has not improved on its best "
                     f"by more than {config.early_stopping_min_delta:g} for {config.early_stopping_patience} epochs, "
                     "keeping the weights of the last epoch that beat it by that margin",
        "best_epoch": int(stopper.best_epoch) + 1,
        "stopped_early": epochs_run < int(config.epochs),
        "validation": "held-out split",
    }


class TrainingProgress(keras.callbacks.Callback):
    """One ``keras.utils.Progbar`` over every step of a training (``total_steps``), with the time left and the
    running loss and accuracy, redrawn at most every ``interval`` seconds (default: 0.5 on a terminal, else 60)."""

    def __init__(self, total_steps, interval=None):
        super().__init__()
        interactive = sys.stdout.isatty()
        self.progbar = keras.utils.Progbar(total_steps, unit_name="step", interval=interval or (
            0.5 if interactive else 60.0), stateful_metrics=["loss", "accuracy"])
        self.step = 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.progbar.update(self.step, values=[(key, float(logs[key])) for key in ("loss", "accuracy")
                                               if logs and key in logs])


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the weights atomically to ``folder/epoch_NNN.weights.h5`` (or ``.npz``) after every ``every``-th
    epoch."""

    def __init__(self, folder, every=1, weights_format="keras"):
        super().__init__()
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"EpochCheckpoint: every must be a positive integer, got {every!r}")
        self.folder = os.fspath(folder)
        self.every = int(every)
        self.weights_format = weights_format

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            suffix = WEIGHTS_FILES[self.weights_format].split(".", 1)[1]
            save_weights(self.model, os.path.join(self.folder, f"epoch_{epoch + 1:03d}.{suffix}"),
                         self.weights_format)


def save_weights(model, path, weights_format="keras"):
    """Write ``model``'s weights to ``path`` atomically, as Keras ``.weights.h5`` or release ``.npz``."""
    if weights_format == "npz":
        from vitcnn_tf.models.checkpoint import save_npz

        save_npz(model, path)
    elif weights_format == "keras":
        _save_keras_weights_atomic(model, path)
    else:
        raise ValueError(f"save_weights: weights_format must be one of {sorted(WEIGHTS_FILES)}, "
                         f"got {weights_format!r}")


def load_weights(model, path, weights_format="keras"):
    """Inverse of :func:`save_weights`; a missing, extra or mis-shaped variable raises."""
    if weights_format == "npz":
        from vitcnn_tf.models.checkpoint import load_npz

        load_npz(model, path)
    elif weights_format == "keras":
        model.load_weights(path)
    else:
        raise ValueError(f"load_weights: weights_format must be one of {sorted(WEIGHTS_FILES)}, "
                         f"got {weights_format!r}")
    return model


def _save_keras_weights_atomic(model, path):
    """``model.save_weights(path)`` through :func:`vitcnn_tf.atomic_io.atomic_path`."""
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"save_weights: a Keras weights path must end in '.weights.h5', got {path!r}")
    with atomic_io.atomic_path(path, suffix=".tmp.weights.h5") as tmp_path:
        model.save_weights(tmp_path, overwrite=True)


def _num_batches(data, argument):
    cardinality = int(data.cardinality())
    if cardinality < 1:
        raise ValueError(f"fit: {argument} must be a finite tf.data.Dataset with known cardinality (got "
                         f"{cardinality}); use vitcnn_tf.data.load_dataset or ds.apply(assert_cardinality(n))")
    return cardinality


def _one_hot(data, num_classes):
    """(images, int labels) -> (images, one-hot float32 labels [b, num_classes]) for the smoothed loss."""
    return data.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)),
                    num_parallel_calls=tf.data.AUTOTUNE)
