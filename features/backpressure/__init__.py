"""Backpressure: ``max_pending`` admission (503 or 429 + Retry-After), the load a route can
report, and a submit that frees its slot as soon as the client goes away."""

from features.backpressure.backpressure import (
    ClientGoneError,
    Job,
    JobDone,
    StreamJob,
    Token,
    job_route,
    load_route,
    stream_route,
    submit_unless_disconnected,
)

__all__ = [
    "ClientGoneError",
    "Job",
    "JobDone",
    "StreamJob",
    "Token",
    "job_route",
    "load_route",
    "stream_route",
    "submit_unless_disconnected",
]
