"""TensorFlow's native log lines: hidden where they are noise, shown when asked for."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null, unless ``TF_CPP_MIN_LOG_LEVEL`` is 0 (asking for every log line).

    TensorFlow 2.21 writes its start-up notices ("All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on") from C++ while it is imported, before it reads
    ``TF_CPP_MIN_LOG_LEVEL``, and TensorFlow Lite announces its XNNPACK delegate the same way;
    in a notebook they show as red stderr. In Jupyter, Python's own warnings and errors do not
    go through descriptor 2, and an exception still propagates after this.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        yield
        return
    sys.stderr.flush()
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no descriptor 2 to redirect
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
