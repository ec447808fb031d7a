"""Fault matrix: Ctrl-C or SIGTERM that lands on a thread other than the main one, while the main
thread of the README's loop is blocked in ``request_q.get()``.

The kernel gives a signal sent to a process to any thread not blocking it, and Python runs the
handler only on the main thread, at its next bytecode: a main thread blocked in a read was never
interrupted, and the loop went on waiting (a signal landing just before the read begins does the
same). Here a thread of the script sends the signal to itself, which is that case made certain.

| condition                                       | before                  | after                       |
|-------------------------------------------------|-------------------------|-----------------------------|
| SIGINT on another thread, main in get()         | main blocked for good   | KeyboardInterrupt, exit 0   |
| SIGTERM on another thread, main in get()        | main blocked for good   | graceful stop, exit 0       |
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from isolated_api.server.signal_delivery import SignalDelivery
from isolated_api.testing import wait_until
from tests.fault_matrix.scripts import script_process

_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, signal, sys, threading

    from isolated_api import ServerBuilder


    async def ping() -> dict[str, bool]:
        return {"pong": True}


    def bystander() -> None:
        # The signal lands on this thread: the main thread's read is not interrupted by it.
        signum = getattr(signal, sys.stdin.readline().strip())
        signal.pthread_kill(threading.get_ident(), signum)


    if __name__ == "__main__":
        request_q, response_q = multiprocessing.Queue(), multiprocessing.Queue()
        server = (
            ServerBuilder("bystander").with_host("127.0.0.1").with_port(0).with_drain_timeout(1.0)
            .routes.with_route("/ping", ping).done()
            .subprocess.with_ipc(request_q, response_q).done()
            .build()
        )
        server.start_subprocess()
        threading.Thread(target=bystander, daemon=True).start()
        print("serving", flush=True)
        try:
            while request_q.get() is not None:
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        finally:
            server.stop(timeout=3.0)
        print("stopped", flush=True)
    """
)


def _blocked(pid: int) -> bool:
    """The main thread (its tid is the pid) is asleep in a system call."""
    with open(f"/proc/{pid}/task/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "S"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_on_another_thread_still_stops_a_main_thread_blocked_in_get(tmp_path: Path, signame: str) -> None:
    """Steps: the README's loop as a script, its main thread blocked in request_q.get(); another
    thread of it sends itself SIGINT (or SIGTERM). Expect KeyboardInterrupt in the loop, stop(),
    "stopped" and exit code 0 within 30 s, with no traceback."""
    with script_process(tmp_path, _SCRIPT) as main:
        assert main.stdout is not None and main.stdin is not None
        assert main.stdout.readline().strip() == "serving"
        wait_until(lambda: _blocked(main.pid), 10, "the main thread to block in request_q.get()")
        main.stdin.write(f"{signame}\n")
        main.stdin.flush()
        out, err = main.communicate(timeout=30)
    assert out.split() == ["interrupted", "stopped"], (out, err)
    assert main.returncode == 0, err
    assert "Traceback" not in err, err


def test_signal_delivery_leaves_a_wakeup_fd_it_did_not_set_alone() -> None:
    """Steps: a wakeup fd set by someone else (as an asyncio loop sets one); install. Expect
    install to refuse, the other fd still set, and SIGINT's handler untouched."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    # A server started by an earlier test on this thread and stopped from another keeps both.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.set_wakeup_fd(write_fd)
    try:
        delivery = SignalDelivery()
        assert not delivery.install()
        assert not delivery.active
        assert signal.set_wakeup_fd(write_fd) == write_fd
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGINT, handler)
        os.close(read_fd)
        os.close(write_fd)


def test_signal_delivery_uninstall_puts_back_handlers_and_the_wakeup_fd() -> None:
    """Steps: install, watch SIGINT, uninstall. Expect Python's own SIGINT handler back, no
    wakeup fd set, and the watcher thread joined."""
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.set_wakeup_fd(-1)
    try:
        delivery = SignalDelivery()
        assert delivery.install()
        delivery.watch(signal.SIGINT, signal.default_int_handler)
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        delivery.uninstall()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.set_wakeup_fd(-1) == -1
        assert delivery._thread is None and not delivery.active
    finally:
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGINT, handler)
