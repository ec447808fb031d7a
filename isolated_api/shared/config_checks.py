"""``ConfigError`` and the checks every configuration dataclass runs in ``__post_init__``. Apart
from ``config.py`` so that the settings a config holds (codecs, restart policy) can raise the same
error without importing the dataclasses that hold them."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A configuration value is invalid."""


def int_at_least(name: str, value: object, minimum: int) -> None:
    # bool is an int subclass; `with_port(True)` is a bug, not port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def optional_int_at_least(name: str, value: object, minimum: int) -> None:
    if value is not None:
        int_at_least(name, value, minimum)


def seconds(name: str, value: object, *, positive: bool) -> None:
    """A finite number of seconds, > 0 (``positive``) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
