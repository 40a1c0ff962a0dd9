"""Experiment entry points: ``python -m experiments.<module> --help``. Importing the package first sets the
TensorFlow environment defaults of :mod:`vitcnn_tf.runtime` (oneDNN kernels, quiet logs) and imports TensorFlow
without its C++ start-up log lines (:func:`vitcnn_tf.runtime.import_tensorflow`)."""

from vitcnn_tf import runtime

runtime.import_tensorflow()
