"""Targets for bare child processes of test_output.py (a spawned child imports them by name): each
writes a marker through every channel a process has, after redirecting its output or not."""

from __future__ import annotations

import ctypes
import json
import logging
import logging.config
import os

from isolated_api.shared.output import configure_logging, redirect_output

# Each channel writes "<marker>-<channel>", so a test can tell which one went astray.
CHANNELS = ("logging", "print", "fd1", "fd2", "libc-write", "libc-puts")


def emit_everywhere(marker: str) -> None:
    """Writes the marker the ways a process can: Python logging, ``print``, raw fds 1 and 2, and
    libc (``write(2)`` and buffered ``puts``, as native libraries do)."""
    logging.getLogger("x").warning("%s-logging", marker)
    print(f"{marker}-print")
    os.write(1, f"{marker}-fd1\n".encode())
    os.write(2, f"{marker}-fd2\n".encode())
    libc = ctypes.CDLL(None)
    line = f"{marker}-libc-write\n".encode()
    libc.write(1, line, len(line))
    libc.puts(f"{marker}-libc-puts".encode())
    libc.fflush(None)


def redirect_then_emit(path: str, marker: str) -> None:
    redirect_output(path)
    emit_everywhere(marker)


def configure_then_log(path: str, marker: str, log_level: str, to_file: bool, config_path: str) -> None:
    """Sets logging up as the child does, logs on the root, uvicorn's and the access logger, and
    saves the returned uvicorn ``log_config`` (its formatters) as JSON in ``config_path``."""
    redirect_output(path)
    config = configure_logging(log_level, to_file=to_file)
    with open(config_path, "w") as out:
        json.dump(config["formatters"], out)
    logging.config.dictConfig(config)
    logging.getLogger("x").warning("%s-root-warning", marker)
    logging.getLogger("x").debug("%s-root-debug", marker)
    logging.getLogger("uvicorn.error").warning("%s-uvicorn-warning", marker)
    # uvicorn's access formatter expects these args, as uvicorn's protocols pass them.
    logging.getLogger("uvicorn.access").warning(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/{marker}", "1.1", 200
    )
