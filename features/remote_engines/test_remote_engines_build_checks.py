"""What ``build()`` and ``EngineHost`` refuse, each with its reason."""

from __future__ import annotations

import queue

import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api import BuildError, ConfigError, EngineBindError, EngineHost, EnginesConfig, PickleCodec, ServerBuilder

from .remote_engines import CODEC


def _builder() -> ServerBuilder:
    return ServerBuilder("api").with_port(0)


def test_remote_engines_build_refuses_pickle_over_the_network_unless_allowed() -> None:
    with pytest.raises(BuildError, match="CVE-2025-30165"):
        _builder().subprocess.with_engines("tcp://gpu-1:5700").done().build()
    server = (
        _builder()
        .subprocess.with_engines("tcp://gpu-1:5700", allow_pickle=True)
        .with_codec(PickleCodec())
        .done()
        .build()
    )
    assert server.is_subprocess_mode


def test_remote_engines_build_refuses_engines_and_queues_together() -> None:
    with pytest.raises(BuildError, match="with_ipc and with_engines"):
        (
            _builder()
            .subprocess.with_ipc(queue.Queue(), queue.Queue())
            .with_engines("tcp://gpu-1:5700")
            .with_codec(CODEC)
            .done()
            .build()
        )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("http://gpu-1:5700", "tcp:// or ipc://"),
        ("tcp://gpu-1", "a host and a port"),
        ("tcp://0.0.0.0:5700", "bind address"),
        ("tcp://gpu-1:0", "port 0 is for binding"),
        (5700, "must be a string"),
    ],
)
def test_remote_engines_bad_addresses_are_refused_with_their_reason(address: object, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        _builder().subprocess.with_engines(address)  # type: ignore[arg-type]


def test_remote_engines_bad_timings_are_refused() -> None:
    with pytest.raises(ConfigError, match="longer than ping_interval"):
        _builder().subprocess.with_engines("tcp://gpu-1:5700", ping_interval=2.0, ping_timeout=1.0)
    with pytest.raises(ConfigError, match="must differ"):
        _builder().subprocess.with_engines("tcp://gpu-1:5700", "tcp://gpu-1:5700")


def test_remote_engines_resolver_must_travel_to_the_workers() -> None:
    with pytest.raises(BuildError, match="define it at module level"):
        (
            _builder()
            .subprocess.with_engines("tcp://engines:5700", resolver=lambda host, port: ["127.0.0.1"])
            .with_codec(CODEC)
            .done()
            .build()
        )


def test_remote_engines_engine_host_refuses_pickle_and_a_taken_address() -> None:
    with pytest.raises(ConfigError, match="CVE-2025-30165"):
        EngineHost(queue.Queue(), queue.Queue(), bind="tcp://127.0.0.1:0", codec=PickleCodec())
    with EngineHost(queue.Queue(), queue.Queue(), bind="tcp://127.0.0.1:0", codec=CODEC) as host:
        assert host.address is not None and host.address.startswith("tcp://127.0.0.1:")
        taken = EngineHost(queue.Queue(), queue.Queue(), bind=host.address, codec=CODEC)
        with pytest.raises(EngineBindError, match="cannot bind"):
            taken.start()


def test_remote_engines_have_a_section_of_their_own_and_the_old_method_is_an_alias() -> None:
    """``.engines`` sets remote engines whole (``with_engines`` or ``with_config(EnginesConfig)``);
    ``.subprocess.with_engines`` does the same and keeps chaining on ``.subprocess``."""
    server = _builder().engines.with_engines("tcp://gpu-1:5700").with_codec(CODEC).done().build()
    assert server.is_subprocess_mode and server.codec == CODEC
    configured = _builder().engines.with_config(EnginesConfig(("tcp://gpu-1:5700",))).done()
    with pytest.raises(ConfigError, match="CVE-2025-30165"):
        configured.build()
    assert configured.engines.with_codec(CODEC).done().build().is_subprocess_mode
    alias = _builder().subprocess.with_engines("tcp://gpu-1:5700").with_codec(CODEC).with_max_pending(3).done()
    assert alias.build().ipc_config.max_pending == 3
    with pytest.raises(ConfigError, match="expected an EnginesConfig"):
        _builder().engines.with_config(("tcp://gpu-1:5700",))  # type: ignore[arg-type]
