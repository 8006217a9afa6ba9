"""One thread for the SimpleITK steps whose results depend on the thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import SimpleITK as sitk


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the enclosed SimpleITK calls on one thread: multi-threaded sums (a registration's
    metric, N4's bias fit) change results in the last digits with the thread count, and the
    registration amplifies them; one thread makes a scan's preprocessing the same on every
    machine for a seed."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
