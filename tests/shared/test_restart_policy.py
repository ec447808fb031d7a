"""The restart budget of the supervisor: growing delays, a cap per window, old restarts forgotten
(moved from features/supervision, which tests the same behaviour through real workers)."""

from __future__ import annotations

import pytest

from isolated_api.shared.config import ConfigError
from isolated_api.shared.restart_policy import RestartBudget, RestartPolicy


def test_restart_policy_budget_backs_off_and_forgets_old_restarts() -> None:
    now = [0.0]
    budget = RestartBudget(RestartPolicy(max_restarts=3, backoff=0.5, max_backoff=1.5, window=10), lambda: now[0])
    assert [budget.next_delay() for _ in range(4)] == [0.5, 1.0, 1.5, None]
    now[0] = 10.5  # the window has passed: the count starts again
    assert budget.next_delay() == 0.5
    with pytest.raises(ConfigError, match="max_restarts"):
        RestartPolicy(max_restarts=0)
    with pytest.raises(ConfigError, match="window"):
        RestartPolicy(window=0)
