"""Imported by the server that forks the worker processes of :mod:`vitcnn_tf.parallel`: TensorFlow, loaded as
:func:`vitcnn_tf.runtime.import_tensorflow` loads it (environment defaults, no C++ start-up log lines, freed memory
kept for reuse), so that every worker starts with it."""

from vitcnn_tf import runtime

runtime.import_tensorflow()
