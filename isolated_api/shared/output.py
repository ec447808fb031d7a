"""Sends all of a process's output to one file: Python logging, uvicorn's loggers, ``print``
and bytes written straight to file descriptors 1 and 2 by native code.

Replacing ``sys.stdout`` alone would miss native writers, so the file takes over the descriptors
themselves with ``dup2``; Python's streams keep writing to fds 1 and 2 and so follow along.
Logging is set up again in the child (it must be, under ``spawn``; under ``fork`` the parent's
handlers would otherwise write to the parent's files).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from typing import Any

from uvicorn.config import LOGGING_CONFIG

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def redirect_output(path: str) -> None:
    """Points fds 1 and 2 (and so ``sys.stdout``/``sys.stderr``) at ``path``, appending."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    # Block buffering would hold prints back until exit (or lose them on SIGKILL).
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def configure_logging(log_level: str, *, to_file: bool) -> dict[str, Any]:
    """Sets up the root logger in this process and returns the ``log_config`` for uvicorn.

    With ``to_file`` the formats carry timestamps and pids and no colours; without it uvicorn's
    defaults are kept, so the child logs as a normal uvicorn app does.
    """
    # UvicornConfig accepts any case ("INFO", "TRACE"); logging has no TRACE, uvicorn's is below DEBUG.
    name = log_level.lower()
    level = logging.DEBUG if name == "trace" else getattr(logging, name.upper())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)

    config = copy.deepcopy(LOGGING_CONFIG)
    if to_file:
        config["formatters"]["default"] = {"()": "uvicorn.logging.DefaultFormatter", "fmt": FORMAT, "use_colors": False}
        config["formatters"]["access"] = {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(asctime)s %(levelname)s [%(process)d] %(client_addr)s - "%(request_line)s" %(status_code)s',
            "use_colors": False,
        }
    return config
