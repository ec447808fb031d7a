"""The optional extras, and the error that names the one a feature needs when it is missing."""

from __future__ import annotations

import importlib.util

REMOTE_INSTALL = "pip install 'isolated_api[remote]'"


def require_remote(feature: str) -> None:
    """Raises ``ImportError`` naming the extra when pyzmq (remote engines' transport) is missing.
    Looked up, not imported: the process that only configures remote engines never loads it."""
    if importlib.util.find_spec("zmq") is None:
        raise ImportError(f"{feature} needs pyzmq, the optional extra for remote engines: {REMOTE_INSTALL}", name="zmq")
