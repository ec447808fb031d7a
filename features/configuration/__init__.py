"""The config dataclasses: every value validated where it is set."""
