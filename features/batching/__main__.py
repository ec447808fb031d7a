"""``python -m features.batching --port 8000 --api-key KEY``: the OpenAI-compatible server over the
fake models. Prints ``serving on http://HOST:PORT`` once the HTTP worker(s) accept connections
(with ``--port 0``, the port the system chose); Ctrl-C or SIGTERM stops it gracefully."""

from __future__ import annotations

import argparse
import sys

from .openai_server import ModelServer, ServeOptions


def parse(argv: list[str]) -> ServeOptions:
    parser = argparse.ArgumentParser(prog="python -m features.batching", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port (printed)")
    parser.add_argument("--api-key", required=True, help="the bearer token every /v1 route requires")
    parser.add_argument("--workers", type=int, default=1, help="HTTP worker processes")
    parser.add_argument("--call-ms", type=float, default=5.0, help="the fake models' cost per call")
    parser.add_argument("--embed-item-ms", type=float, default=0.1, help="added per embedded string")
    parser.add_argument("--step-item-ms", type=float, default=0.05, help="added per active chat stream")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait", type=float, default=0.002, help="seconds a batch waits to fill")
    parser.add_argument("--max-active", type=int, default=32, help="chat streams stepped together")
    parser.add_argument("--log-file", default=None, help="the HTTP workers' log (default: this terminal)")
    args = parser.parse_args(argv)
    return ServeOptions(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        workers=args.workers,
        call_seconds=args.call_ms / 1e3,
        embed_item_seconds=args.embed_item_ms / 1e3,
        step_item_seconds=args.step_item_ms / 1e3,
        max_batch_size=args.max_batch_size,
        max_wait=args.max_wait,
        max_active=args.max_active,
        log_file=args.log_file,
    )


def main(argv: list[str]) -> None:
    with ModelServer(parse(argv)) as served:
        print(f"serving on {served.url}", flush=True)
        try:
            # SIGTERM drains the server and then interrupts this wait as Ctrl-C does (docs/operations.md).
            served.server.wait()
        except KeyboardInterrupt:
            pass
    print("stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
