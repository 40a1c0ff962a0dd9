"""Experiment entry points: ``python -m experiments.<module> --help``. Importing the package first sets the
TensorFlow environment defaults of :mod:`vitcnn_tf.runtime` (oneDNN kernels, quiet logs)."""

from vitcnn_tf import runtime

runtime.set_environment_defaults()
