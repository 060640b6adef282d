"""Imported by every Python process of a CLI test (PYTHONPATH): a hang becomes a failure with every stack printed.

``BALDRO_HANG_GUARD_S`` seconds after start, :func:`faulthandler.dump_traceback_later` writes all threads' stacks to
stderr and exits the process with status 1, so a deadlocked multi-process run fails and shows where each rank
waits (rank 0 and the ranks Lightning or torchrun launch inherit the environment).
"""

import faulthandler
import os
import sys

_seconds = os.environ.get("BALDRO_HANG_GUARD_S")
if _seconds:
    sys.stderr.write(f"[hang guard] pid {os.getpid()}: stacks dumped and exit after {_seconds} s\n")
    faulthandler.dump_traceback_later(float(_seconds), exit=True)
