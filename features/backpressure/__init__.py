"""Backpressure: ``max_pending`` admission (503/429 + Retry-After) and slots freed when the client leaves."""
