"""Test-session setup shared by every test module.

* The TensorFlow environment defaults of ``vitcnn_tf.runtime`` (oneDNN kernels, quiet logs), as the experiments use.
* Two logical CPU devices are created before TensorFlow initialises, so that ``tf.distribute.MirroredStrategy``
  tests run on this CPU-only machine (it must happen before any op executes, hence here).
* Hypothesis: no deadline (first calls compile ``tf.function`` graphs), a bounded number of examples. The profile
  is ``$HYPOTHESIS_PROFILE`` when set (``.ci/run`` sets ``ci``), else ``ci`` when ``$CI`` is set, else ``default``;
  ``ci`` is derandomised (the same examples on every run).
"""

import os

from vitcnn_tf import runtime  # noqa: E402

runtime.set_environment_defaults()  # before TensorFlow is imported

import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

settings.register_profile(
    "default", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))
