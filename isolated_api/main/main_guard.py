"""Tells a server started by a script that multiprocessing is re-running to prepare a worker.

Under ``spawn`` (and ``forkserver``) multiprocessing starts each worker by running the parent's
main script again, as ``__mp_main__``, before any code of ours runs there. A script that builds and
starts the server at its top level, outside ``if __name__ == "__main__":``, would start a server
inside every worker: each one binds the port again (EADDRINUSE) or tries to spawn workers of its
own, and the user reads a cascade of tracebacks. Such a worker exits at once, quietly, with an exit
code of its own, and the main process explains it in one line.
"""

from __future__ import annotations

import multiprocessing
import os

# EX_CONFIG in sysexits.h: the configuration (here, the script's layout) is wrong.
UNGUARDED_MAIN_EXIT_CODE = 78

UNGUARDED_MAIN_HINT = (
    "the HTTP workers could not start because the main script starts the server when it is imported: "
    'under the "{method}" start method every worker imports the main script again, so build and start '
    'the server under `if __name__ == "__main__":`'
)


def preparing_a_worker() -> bool:
    """True while multiprocessing is still preparing this process (re-running the main script).

    multiprocessing marks that phase with ``current_process()._inheriting`` (its own check for the
    same mistake, ``spawn._check_not_importing_main``, reads it); tests/fault_matrix/
    test_startup_errors.py checks that it still does on the running CPython. (``parent_process()``
    can't tell: multiprocessing sets it only after the preparation.)"""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def exit_if_preparing_a_worker() -> None:
    """Ends this process at once if it is a worker whose preparation reached a server's start."""
    if preparing_a_worker():
        # No clean-up: nothing of the worker's own has started, and the script's code after this
        # line must not run here.
        os._exit(UNGUARDED_MAIN_EXIT_CODE)
