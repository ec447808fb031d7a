"""SubprocessManager: start a function in a child process (``spawn`` by default), optionally with
all its output in a log file, and stop it for sure: SIGTERM, wait, SIGKILL."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
from collections.abc import Callable
from typing import Any

from isolated_api.shared.config import START_METHODS
from isolated_api.shared.output import redirect_output

logger = logging.getLogger("isolated_api.subprocess")


def _bootstrap(target: Callable[..., Any], args: tuple[Any, ...], log_file: str | None) -> None:
    if log_file is not None:
        # As early as multiprocessing lets us: under spawn the parent's main module has already
        # been re-imported by now (keep its top level quiet, under `if __name__ == "__main__":`),
        # but anything the target's arguments import after this point writes to the file.
        redirect_output(log_file)
    target(*args)


class SubprocessManager:
    def __init__(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        log_file: str | None = None,
        shutdown_timeout: float = 5.0,
        *,
        start_method: str = "spawn",
        name: str = "isolated-api-child",
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        if shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {shutdown_timeout}")
        self._target = target
        self._args = args
        self._log_file = log_file
        self.shutdown_timeout = shutdown_timeout
        self._context = multiprocessing.get_context(start_method)
        self._name = name
        self._process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> multiprocessing.process.BaseProcess:
        if self.is_alive():
            raise RuntimeError("the subprocess is already running")
        # daemon: if the parent exits without stop(), multiprocessing terminates the child.
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_bootstrap, args=(self._target, self._args, self._log_file), name=self._name, daemon=True
        )
        process.start()
        self._process = process
        return process  # type: ignore[no-any-return]

    def stop(self, timeout: float | None = None) -> int | None:
        """Terminates the child: SIGTERM, up to ``timeout`` (default ``shutdown_timeout``) seconds
        to exit, then SIGKILL. Returns the exit code; harmless if it is not running."""
        process = self._process
        if process is None:
            return None
        wait = self.shutdown_timeout if timeout is None else timeout
        if process.is_alive():
            process.terminate()
            process.join(wait)
        if process.is_alive():
            logger.warning("child %s did not exit %.1f s after SIGTERM; killing it", process.pid, wait)
            process.kill()
            process.join()
        return process.exitcode

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._process is not None:
            self._process.join(timeout)

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        return self._process

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode
