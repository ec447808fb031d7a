"""A route module that writes at import time, as some libraries do (warnings, banners)."""

from __future__ import annotations

import os

_MARKER = os.environ.get("NOISY_IMPORT_MARKER")
if _MARKER:
    print(f"{_MARKER}-import-print", flush=True)
    os.write(2, f"{_MARKER}-import-fd2\n".encode())


async def quiet_route() -> dict[str, bool]:
    return {"ok": True}
