"""Issue 15: replicas of the whole server (main process and HTTP worker each) behind a real nginx
survive a rolling restart without one failed request.

Two replicas (tests/deploy/replica_app.py, the README's loop) sit behind nginx with its own
prefix and config in tmp_path. Four keep-alive clients send GET and POST through nginx all along;
each replica in turn gets SIGTERM on its main process (what Kubernetes and systemd send), must
exit 0, and is started again on the same port. What makes 0 failures possible, and what the test
proves, is the pair:

- the library's graceful stop: a draining worker answers new requests 503 (``Connection: close``)
  while the requests already inside it finish, and once it is gone the port refuses connections
  (the main process lets go of its copy of the socket when the drain starts, so the port closes
  with the worker's; a connection reaching the backlog in that instant is reset);
- nginx's ``proxy_next_upstream error timeout http_502 http_503 non_idempotent``: a 503 from a
  draining replica, and a connection refused or reset before any answer, are retried on the other
  one. Each is a refusal before the route ran, which is why retrying a POST is safe here; without
  ``non_idempotent`` the POSTs among them reach the client (38 in one run).

The nginx binary comes from Debian's ``nginx-light`` (.ci/run installs it); without it the test
is skipped and says so.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

REPLICA_APP = Path(__file__).resolve().parent / "replica_app.py"
# Generous: two cores shared with other test runs; a replica's start-up (two interpreters
# importing FastAPI) takes about a second unloaded.
DEADLINE = 30.0
CLIENTS = 4
# Before the rolls each replica, and after them each replica's new run, must serve this many
# requests through nginx: the load is seen to reach both, then and again.
SERVED = 25
# While one replica rolls, the other must serve at least this many (dozens to hundreds measured).
SERVED_DURING_ROLL = 10


def _nginx_binary() -> str | None:
    # Debian installs nginx in /usr/sbin, which is not on a non-root user's PATH.
    found = shutil.which("nginx")
    if found is not None:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A replica's port must stay free
    while the replica restarts on it; inside the ephemeral range, any outgoing connection on the
    machine (nginx's own to the other replica included) could take it as its source port
    meanwhile, and the restart would fail with EADDRINUSE."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free loopback port found below {low}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _stop_group(process: subprocess.Popen[bytes], first: signal.Signals, grace: float) -> None:
    """Clean-up of a process this test started in a session of its own: ``first`` to it, then
    SIGKILL to its group (its children too) if it is still there after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@dataclass
class Replica:
    """One replica: a ``replica_app.py`` main process this test starts, stops and starts again."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)
    _log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._log_file is None:
            self._log_file = self.log.open("ab")
        self._log_file.write(f"--- run {len(self.pids) + 1} ---\n".encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            [sys.executable, str(REPLICA_APP), str(self.port)],
            cwd=self.log.parent,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for pytest doesn't reach it, and clean-up can kill
            # the whole group (main process and HTTP worker) it heads.
            start_new_session=True,
        )
        self.pids.append(self.process.pid)

    def wait_ready(self) -> None:
        """Until ``/health/ready`` answers 200 on the replica's own port (not through nginx)."""
        assert self.process is not None
        deadline = time.monotonic() + DEADLINE
        last = "no answer yet"
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"replica {self.name} exited with {self.process.returncode} before it was ready:\n"
                        f"{_tail(self.log)}"
                    )
                try:
                    response = client.get(f"{self.url}/health/ready")
                except httpx.HTTPError as exc:  # refused until the new main process binds the port
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text}"
                time.sleep(0.05)  # a bounded polling loop's pause, not the wait itself
        raise AssertionError(f"replica {self.name} not ready within {DEADLINE} s ({last}):\n{_tail(self.log)}")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self) -> int:
        assert self.process is not None
        try:
            return self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"replica {self.name} still running {DEADLINE} s after SIGTERM:\n{_tail(self.log)}"
            ) from None

    def close(self) -> None:
        if self.process is not None:
            _stop_group(self.process, signal.SIGTERM, 15.0)
        if self._log_file is not None:
            self._log_file.close()


NGINX_CONF = """\
# Everything nginx writes stays under its prefix (tmp_path), so it runs as any user.
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
{user}
events {{
    worker_connections 256;
}}

http {{
    default_type application/octet-stream;
    log_format upstreams '$status $request_method "$upstream_addr" "$upstream_status" $request_time';
    access_log {prefix}/access.log upstreams;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # nginx would otherwise close a client's keep-alive connection every 1000 requests.
    keepalive_requests 100000;

    upstream replicas {{
        # max_fails=0: a replica is never benched; a refused connect costs one retry, and the
        # replica serves again as soon as it accepts.
        server 127.0.0.1:{port_a} max_fails=0;
        server 127.0.0.1:{port_b} max_fails=0;
        keepalive 16;
        # Below uvicorn's 5 s timeout_keep_alive: nginx drops an idle connection before the
        # replica does, instead of racing it with a new request.
        keepalive_timeout 4s;
    }}

    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # A draining replica's 503 and a refused or reset connection go to the other one;
            # non_idempotent extends that to POST (safe only because each is a refusal before the
            # route ran: a 503 from the drain, or a connection nobody accepted).
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


@contextmanager
def _nginx(binary: str, prefix: Path, port_a: int, port_b: int) -> Iterator[str]:
    """nginx in the foreground with its own prefix; yields its URL once it proxies a request."""
    listen = _free_port()
    # As root, nginx's worker would switch to "nobody", who can't enter pytest's private tmp_path
    # (its temp files live there). Written only for root: nginx warns about it for anyone else.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, user=user, port_a=port_a, port_b=port_b, listen=listen))
    stderr = (prefix / "nginx.stderr").open("wb")
    process = subprocess.Popen(
        [binary, "-p", f"{prefix}/", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{listen}"
        deadline = time.monotonic() + DEADLINE
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise AssertionError(
                        f"nginx exited with {process.returncode}:\n{_tail(prefix / 'nginx.stderr')}\n"
                        f"{_tail(prefix / 'error.log')}"
                    )
                try:
                    if client.get(f"{url}/v1/echo").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx not proxying within {DEADLINE} s:\n{_tail(prefix / 'error.log')}")
                time.sleep(0.05)  # a bounded polling loop's pause, not the wait itself
        yield url
    finally:
        # SIGQUIT: nginx's graceful stop (finishes its requests, flushes the access log).
        _stop_group(process, signal.SIGQUIT, 10.0)
        stderr.close()


@dataclass(frozen=True)
class Outcome:
    started: float
    finished: float
    replica: int | None = None
    main_pid: int | None = None
    error: str | None = None


class Load:
    """``CLIENTS`` threads, each a keep-alive client sending GET and POST through nginx in turn
    until stopped; every answer is recorded, and anything but a 200 with the right body is a
    failure with its detail."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []  # list.append is atomic: threads share it unlocked
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE + 5)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def served_by(self, main_pid: int) -> int:
        return sum(1 for o in self.outcomes if o.main_pid == main_pid)

    def wait_served(self, *runs: Replica) -> None:
        """Until the current run of each of ``runs`` has served ``SERVED`` requests."""
        deadline = time.monotonic() + DEADLINE
        while (counts := [self.served_by(r.pids[-1]) for r in runs]) and min(counts) < SERVED:
            assert time.monotonic() < deadline, f"in {DEADLINE} s the replicas served {counts}, want {SERVED} each"
            time.sleep(0.05)  # a bounded polling loop's pause, not the wait itself

    def _run(self, client_no: int) -> None:
        with httpx.Client(base_url=self.url, timeout=DEADLINE, trust_env=False) as client:
            sent = 0
            while not self._stop.is_set():
                sent += 1
                payload = f"client{client_no}-{sent}" if sent % 2 else None
                started = time.monotonic()
                try:
                    if payload is None:
                        response = client.get("/v1/echo")
                    else:
                        response = client.post("/v1/echo", json={"payload": payload})
                    outcome = self._check(response, payload, started)
                except Exception as exc:  # every kind of failure is counted, none kills the client
                    outcome = Outcome(started, time.monotonic(), error=f"{type(exc).__name__}: {exc}")
                self.outcomes.append(outcome)

    @staticmethod
    def _check(response: httpx.Response, payload: str | None, started: float) -> Outcome:
        finished = time.monotonic()
        method = response.request.method
        if response.status_code != 200:
            return Outcome(started, finished, error=f"{method} {response.status_code} {response.text[:200]}")
        body: dict[str, Any] = response.json()
        if body.get("payload") != payload:
            return Outcome(started, finished, error=f"{method} answered {body}, expected payload {payload!r}")
        return Outcome(started, finished, int(body["replica"]), int(body["main_pid"]))


def _probe_while_stopping(replica: Replica) -> collections.Counter[str]:
    """What the replica's own readiness probe answers from SIGTERM until its main process exits
    (the 503 window, then refused connections): evidence printed with the summary."""
    assert replica.process is not None
    seen: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + DEADLINE
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while replica.process.poll() is None and time.monotonic() < deadline:
            try:
                seen[str(client.get(f"{replica.url}/health/ready").status_code)] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
            time.sleep(0.02)  # a bounded polling loop's pause, not the wait itself
    return seen


def _served_between(outcomes: list[Outcome], start: float, end: float, replica: Replica) -> int:
    """Requests sent at ``start`` or later and answered by ``end`` that ``replica`` served."""
    return sum(1 for o in outcomes if start <= o.started and o.finished <= end and o.replica == replica.port)


def test_rolling_restart_behind_nginx_fails_no_request(tmp_path: Path) -> None:
    """Steps: two replicas on their own ports; nginx in front with both as one upstream; four
    keep-alive clients send GET and POST /v1/echo through nginx throughout, until each replica
    has served SERVED. Replica A: SIGTERM to its main process, wait for its exit, start it again
    on the same port, wait until its own /health/ready is 200; then the same for B; keep the load
    on until each new run has served SERVED. Expect: no failed request (every answer a 200 with
    its own payload), at least SERVED_DURING_ROLL served by the other replica during each roll,
    and both old main processes exited 0 after logging the graceful stop, without a traceback."""
    nginx = _nginx_binary()
    if nginx is None:
        pytest.skip("no nginx binary (not on PATH, not /usr/sbin/nginx): apt-get install nginx-light")
    began = time.monotonic()
    a = Replica("A", _free_port(), tmp_path / "replica-a.log")
    b = Replica("B", _free_port(), tmp_path / "replica-b.log")
    events: dict[str, float] = {}
    probes: dict[str, dict[str, int]] = {}
    exit_codes: dict[str, int] = {}
    with ExitStack() as cleanup:
        for replica in (a, b):
            cleanup.callback(replica.close)
            replica.start()
        for replica in (a, b):
            replica.wait_ready()
        url = cleanup.enter_context(_nginx(nginx, tmp_path, a.port, b.port))
        load = Load(url).start()
        cleanup.callback(load.stop)
        load.wait_served(a, b)

        for replica in (a, b):
            events[f"{replica.name} sigterm"] = time.monotonic()
            replica.terminate()
            probes[replica.name] = dict(_probe_while_stopping(replica))
            exit_codes[replica.name] = replica.wait_exit()
            events[f"{replica.name} exited"] = time.monotonic()
            replica.start()
            replica.wait_ready()
            events[f"{replica.name} ready"] = time.monotonic()

        load.wait_served(a, b)
        load.stop()
    elapsed = time.monotonic() - began

    outcomes, failures = load.outcomes, load.failures
    upstream = collections.Counter(
        line.split('"')[3] for line in (tmp_path / "access.log").read_text().splitlines() if line.count('"') >= 4
    )
    latencies = sorted(o.finished - o.started for o in outcomes)
    # While one replica drained, was gone and started again, the other carried the load.
    during_roll = {
        down.name: _served_between(outcomes, events[f"{down.name} sigterm"], events[f"{down.name} ready"], other)
        for down, other in ((a, b), (b, a))
    }
    while_gone = {
        down.name: _served_between(outcomes, events[f"{down.name} exited"], events[f"{down.name} ready"], other)
        for down, other in ((a, b), (b, a))
    }
    took = {r.name: round(events[f"{r.name} ready"] - events[f"{r.name} sigterm"], 2) for r in (a, b)}
    summary = (
        f"{len(outcomes)} requests through nginx in {elapsed:.1f} s, {len(failures)} failed; "
        f"slowest {latencies[-1]:.3f} s, p99 {latencies[int(len(latencies) * 0.99)]:.3f} s; "
        f"served per run (main pid: count): {dict(collections.Counter(o.main_pid for o in outcomes))}; "
        f"nginx upstream statuses: {dict(upstream)}; roll took (s): {took}; served by the other "
        f"replica during the roll: {during_roll}, of which after the exit: {while_gone}; "
        f"A's and B's own /health/ready from SIGTERM to exit: {probes}"
    )
    print(summary)

    assert not failures, f"{len(failures)} failed requests, the first ones: {failures[:10]}\n{summary}"
    assert exit_codes == {"A": 0, "B": 0}, f"{exit_codes}\nA:\n{_tail(a.log)}\nB:\n{_tail(b.log)}"
    for replica in (a, b):
        log = replica.log.read_text(errors="replace")
        # The first run's part of the log; clean-up stopped the second run with SIGTERM too.
        first_run = log.split("--- run 2 ---")[0]
        assert "SIGTERM: stopping gracefully" in first_run and "Traceback" not in log, log
    assert len(outcomes) > 50, summary
    assert min(during_roll.values()) >= SERVED_DURING_ROLL, summary
    for replica in (a, b):
        # The old run served before its roll, the new one after it.
        assert load.served_by(replica.pids[0]) >= SERVED and load.served_by(replica.pids[-1]) >= SERVED, summary
