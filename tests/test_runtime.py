"""Runtime settings of the processes the project starts: the allocator settings are accepted by glibc; tf.data
options follow the thread limit; a command's exit without teardown keeps its status and buffered output."""

import platform
import subprocess
import sys

import pytest

from vitcnn_tf import runtime


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_every_allocator_setting():
    # mallopt returns 0 for a value out of its range (an mmap threshold above 32 MiB, for one)
    assert runtime.keep_freed_memory() is True


def test_dataset_options_turn_autotuning_off_only_in_a_thread_limited_process():
    assert runtime.thread_limit() is None  # the test process keeps TensorFlow's thread pools
    assert runtime.dataset_options().autotune.enabled is None  # TensorFlow's default (on)
    script = ("from vitcnn_tf import runtime; from vitcnn_tf.data import pipeline; runtime.limit_threads(1); "
              "options = pipeline.load_dataset('shapes10', 'test', num_examples=20, batch_size=10).options(); "
              "print(options.autotune.enabled, options.threading.private_threadpool_size, "
              "options.threading.max_intra_op_parallelism)")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["False", "1", "1"]


def test_exit_without_teardown_flushes_the_output_and_keeps_the_status():
    script = ("import atexit, sys; from vitcnn_tf import runtime; atexit.register(print, 'teardown ran'); "
              "print('written', end=''); sys.stderr.write('warned'); runtime.exit_without_teardown(3)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "written", "warned")
