"""A script of the fault matrix run as a main process of its own, as a user runs one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def script_process(tmp_path: Path, source: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``source`` written to ``tmp_path/serve.py`` and run with ``args``, its stdin, stdout and
    stderr piped (text); killed on exit if it is still running, and its output drained."""
    script = tmp_path / "serve.py"
    script.write_text(source)
    main = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
    )
    try:
        yield main
    finally:
        if main.poll() is None:
            main.kill()
        main.communicate(timeout=30)
