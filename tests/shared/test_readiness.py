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


def test_readiness_judges_a_queue_that_counts_by_its_reads_not_by_replies() -> None:
    long_job = {"pending": 1, "oldest_pending_age": 9.0, "last_reply_age": 9.0, "unread": 0, "unread_age": 0.0}
    assert readiness_problem({**long_job, "read_quiet_age": 9.0}, channel_open=True, deadline=1.0) is None
    # A backlog worked through: the oldest waited past the deadline, but reads go on.
    backlog = {**long_job, "unread": 40, "unread_age": 5.0, "read_quiet_age": 0.2}
    assert readiness_problem(backlog, channel_open=True, deadline=1.0) is None
    stopped = {**backlog, "read_quiet_age": 5.0}
    assert "not reading request_q: 40 request(s)" in str(readiness_problem(stopped, channel_open=True, deadline=1.0))
    timed_out = {**long_job, "read_quiet_age": 9.0, "unanswered_age": 2.0}
    assert "timed out unanswered" in str(readiness_problem(timed_out, channel_open=True, deadline=1.0))
    # A queue that can't count: replies judge, so a long job does look stalled.
    cannot_count = {**long_job, "unread": None, "unread_age": None, "read_quiet_age": None}
    assert "has not answered" in str(readiness_problem(cannot_count, channel_open=True, deadline=1.0))
