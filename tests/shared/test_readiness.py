"""Readiness rules and health settings (moved from features/health, which checks the same through
the HTTP routes and server.health())."""

from __future__ import annotations

import pytest

from isolated_api.shared.config import ConfigError
from isolated_api.shared.readiness import HealthSettings, readiness_problem


def test_readiness_settings_and_rules() -> None:
    with pytest.raises(ConfigError, match="start with"):
        HealthSettings(live_path="health")
    with pytest.raises(ConfigError, match="differ"):
        HealthSettings(live_path="/h", ready_path="/h")
    with pytest.raises(ConfigError, match="deadline"):
        HealthSettings(deadline=0)
    fresh = {"pending": 3, "oldest_pending_age": 0.2, "last_reply_age": 5.0}
    assert readiness_problem(fresh, channel_open=True, deadline=1.0) is None
    stalled = {"pending": 3, "oldest_pending_age": 2.0, "last_reply_age": 2.0}
    assert "has not answered" in str(readiness_problem(stalled, channel_open=True, deadline=1.0))
    busy_but_answering = {"pending": 3, "oldest_pending_age": 2.0, "last_reply_age": 0.1}
    assert readiness_problem(busy_but_answering, channel_open=True, deadline=1.0) is None
    assert "did not answer" in str(readiness_problem(None, channel_open=True, deadline=1.0))
    assert "closed" in str(readiness_problem(fresh, channel_open=False, deadline=1.0))
