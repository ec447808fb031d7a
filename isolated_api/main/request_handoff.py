"""A large request handed to the main loop without its bytes crossing ``request_q``'s pipe.

A ``multiprocessing.Queue`` is a pipe of 64 KiB. A 16 MiB request written into it holds the
relay's thread (and the queue's write lock, so every other worker's request) until the main loop
has read it all, 64 KiB at a time, each read into a new buffer that is then copied once more: in
the figures of issue 28 that read was about half of the main loop's time. Yet the loop usually
reads ``request_q`` in the process the relay runs in, where the bytes already are.

So for a request of ``HANDOFF_MIN`` bytes or more the relay keeps the bytes here and puts on
``request_q`` a small ``HandedRequest`` in their place, in the same order as every other message.
Unpickling it, which ``request_q.get()`` does, *is* taking the request:

- **In this process** it is the request, unpickled straight from the bytes kept here (one copy,
  into the user's objects), and they are dropped.
- **In another process** (a queue passed to a child, or a forked one) it fetches the bytes from
  this process over a Unix socket, ``multiprocessing.connection`` with the process's authkey,
  which children started by ``multiprocessing`` share; the socket lives in a private (0700)
  directory. The relay cannot know where the queue is read, so it must work everywhere; there it
  costs what the pipe did. A reader whose relay's process is gone raises ``RuntimeError``: its
  request's worker and route died with that process, so nothing could take its reply either.

The socket's thread runs from the first large request while any relay of this process runs, and
after the last one stopped until the last request kept here is taken. One that is never read
(the main loop never takes it) keeps its bytes, and that thread, until this process exits, as a
message unread in the pipe would have stayed there.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from multiprocessing import AuthenticationError, current_process
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from isolated_api.shared.framing import Body, loads

logger = logging.getLogger("isolated_api.relay")

# The default size of a pipe: a write of this much or more waits for its reader.
HANDOFF_MIN = 64 * 1024
# How long the socket's side waits for a fetching reader to name what it wants.
_ASK_TIMEOUT = 10.0  # seconds


class HandedRequest:
    """What ``request_q`` carries for a request whose bytes wait here; unpickled, it is the request
    (or, with a binary codec, its encoded ``bytes``)."""

    __slots__ = ("address", "binary", "pid", "token")

    def __init__(self, token: int, address: str, binary: bool) -> None:
        self.token = token
        self.pid = os.getpid()
        self.address = address
        self.binary = binary

    def __reduce__(self) -> tuple[Any, tuple[int, int, str, bool]]:
        return (_take, (self.token, self.pid, self.address, self.binary))


class _Exporter:
    """The Unix socket a reader in another process fetches a request's bytes from."""

    def __init__(self) -> None:
        self._listener = Listener(family="AF_UNIX", authkey=current_process().authkey)
        self.address: str = self._listener.address
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, name="isolated-api-handoff", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except (AuthenticationError, EOFError, ConnectionError):
                if self._stopping:
                    return
                continue  # a peer without the authkey, or one that hung up: not ours to serve
            except OSError:
                if not self._stopping:  # out of descriptors, say: retrying at once would spin
                    logger.exception("the request handoff's socket failed; readers in other processes can't fetch")
                return
            if self._stopping:
                conn.close()
                return
            threading.Thread(target=_answer, args=(conn,), name="isolated-api-handoff-send", daemon=True).start()

    def stop(self) -> None:
        self._stopping = True
        try:  # accept() is woken by a peer: this process, with its own key
            Client(self.address, family="AF_UNIX", authkey=current_process().authkey).close()
        except Exception:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._listener.close()


_lock = threading.Lock()
_held: dict[int, Body] = {}
_tokens = itertools.count(1)
_exporter: _Exporter | None = None
_relays = 0  # relays of this process that are running
_counts = {"local": 0, "fetched": 0}


def _forked() -> None:
    # A forked child shares none of this: the parent's requests are fetched from the parent.
    global _lock, _held, _exporter, _relays
    _lock = threading.Lock()
    _held = {}
    _exporter = None
    _relays = 0


os.register_at_fork(after_in_child=_forked)


def relay_started() -> None:
    global _relays
    with _lock:
        _relays += 1


def relay_stopped() -> None:
    global _relays
    with _lock:
        _relays -= 1
    _stop_when_idle()


def hold(payload: Body, binary: bool) -> HandedRequest:
    """Keeps ``payload`` (a pickled request, or a binary codec's encoded one) until a reader takes
    it; what to put on ``request_q`` in its place. ``release`` it if it is never put."""
    global _exporter
    with _lock:
        if _exporter is None:
            _exporter = _Exporter()
        token = next(_tokens)
        _held[token] = payload
        return HandedRequest(token, _exporter.address, binary)


def release(handed: HandedRequest) -> None:
    """``handed`` was never put on the queue (full, closed): its bytes are dropped."""
    with _lock:
        _held.pop(handed.token, None)
    _stop_when_idle()


def held_count() -> int:
    """Requests whose bytes wait here for their reader (for tests and figures)."""
    with _lock:
        return len(_held)


def socket_address() -> str | None:
    """Where readers in other processes fetch from, while the socket is open (for tests)."""
    with _lock:
        return None if _exporter is None else _exporter.address


def handoff_counts() -> dict[str, int]:
    """Requests taken in this process, and fetched from it by readers in other processes."""
    return dict(_counts)


def _stop_when_idle() -> None:
    global _exporter
    with _lock:
        exporter = _exporter if _relays <= 0 and not _held else None
        if exporter is not None:
            _exporter = None
    if exporter is not None:
        exporter.stop()


def _answer(conn: Connection) -> None:
    try:
        with conn:
            if not conn.poll(_ASK_TIMEOUT):
                return
            token = int.from_bytes(conn.recv_bytes(16), "little")
            with _lock:
                payload = _held.pop(token, None)
            conn.send_bytes(payload if payload is not None else b"")
            if payload is not None:
                _counts["fetched"] += 1
    except (OSError, EOFError, ValueError):
        logger.warning("a reader in another process failed to fetch a request from this one", exc_info=True)
    finally:
        _stop_when_idle()


def _decoded(payload: Body, binary: bool) -> Any:
    return bytes(payload) if binary else loads(payload)


def _take(token: int, pid: int, address: str, binary: bool) -> Any:
    if pid == os.getpid():
        with _lock:
            payload = _held.pop(token, None)
        if payload is None:
            raise RuntimeError(f"a handed-over request ({token}) was taken twice: request_q was read by two readers")
        try:
            _counts["local"] += 1
            return _decoded(payload, binary)
        finally:
            if not _relays:
                _stop_when_idle()
    try:
        with Client(address, family="AF_UNIX", authkey=current_process().authkey) as conn:
            conn.send_bytes(token.to_bytes(8, "little"))
            payload = conn.recv_bytes()
    except Exception as exc:
        raise RuntimeError(
            f"a request on request_q could not be fetched from the server's process (pid {pid}), which "
            f"holds its bytes: {exc!r}. Its server has stopped, or this process's multiprocessing "
            "authkey is not that process's"
        ) from None
    if not payload:
        raise RuntimeError(f"the server's process (pid {pid}) no longer holds a request on request_q ({token})")
    return _decoded(payload, binary)
