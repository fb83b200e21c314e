"""Commands the package prints for the user to type (``tensorboard --logdir RUN``, ``metarl train --resume RUN``):
each names its executable so that it runs as printed, whether or not the virtual environment is active.

`make run` starts ``.venv/bin/metarl`` without activating ``.venv``, so a bare ``tensorboard`` in the run's closing
lines would be "command not found". :func:`executable` gives the bare name when the shell finds this environment's
copy on PATH, else the copy's path (relative to the current folder when inside it: ``.venv/bin/tensorboard``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def executable(name: str) -> str:
    """How to type the console script ``name`` (``metarl``, ``tensorboard``) of the environment running us."""
    beside = Path(sys.executable).parent / name          # not resolved: a venv's python is a symlink out of it
    if not beside.is_file():
        return name                                      # not installed here: the name is all we know
    found = shutil.which(name)
    try:
        if found and os.path.samefile(found, beside):
            return name
    except OSError:
        pass
    try:
        return str(beside.relative_to(Path.cwd()))       # .venv/bin/tensorboard: a path, so no PATH lookup
    except ValueError:
        return str(beside)


def command(name: str, *args: object) -> str:
    """The command line ``name args...`` as printed for the user (:func:`executable`; arguments shell-quoted)."""
    return " ".join([shlex.quote(executable(name)), *(shlex.quote(str(a)) for a in args)])
