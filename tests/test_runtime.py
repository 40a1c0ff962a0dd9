"""Runtime settings of the processes the project starts: the allocator settings are accepted by glibc."""

import platform

import pytest

from vitcnn_tf import runtime


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_every_allocator_setting():
    # mallopt returns 0 for a value out of its range (an mmap threshold above 32 MiB, for one)
    assert runtime.keep_freed_memory() is True
