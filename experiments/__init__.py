"""Experiment entry points: ``python -m experiments.<module> --help``. Importing the package sets the TensorFlow
environment defaults of :mod:`vitcnn_tf.runtime` (oneDNN kernels, quiet logs) and nothing else;
:mod:`experiments.common`, which every entry point imports before any module that uses TensorFlow, imports
TensorFlow without its C++ start-up log lines (:func:`vitcnn_tf.runtime.import_tensorflow`). So
``experiments.reproduce`` can start its worker server before this process spends seconds importing TensorFlow."""

from vitcnn_tf import runtime

runtime.set_environment_defaults()
