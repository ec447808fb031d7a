"""The restart budget of the supervisor: a worker that served is replaced at once, a crash loop
backs off up to a cap and starts over after a healthy run, and only failed start-ups in a row give
up (features/supervision and tests/fault_matrix/test_poison_requests.py check the same through
real workers)."""

from __future__ import annotations

import pytest

from isolated_api.shared.config import ConfigError
from isolated_api.shared.restart_policy import Death, RestartBudget, RestartPolicy

NEVER_READY = Death(ready_for=None, served=False)
QUICK = Death(ready_for=0.2, served=False)
SERVED = Death(ready_for=0.2, served=True)
LONG = Death(ready_for=10.0, served=False)


def test_restart_policy_a_worker_that_served_is_replaced_at_once_forever() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=2, backoff=0.5, max_backoff=1.5, window=10))
    assert [budget.next_delay(SERVED) for _ in range(100)] == [0.0] * 100


def test_restart_policy_a_crash_loop_backs_off_up_to_the_cap_and_never_gives_up() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=2, backoff=0.5, max_backoff=1.5, window=10))
    assert [budget.next_delay(QUICK) for _ in range(5)] == [0.5, 1.0, 1.5, 1.5, 1.5]
    # A healthy run (served, or ready for the whole window) starts the count over.
    assert budget.next_delay(LONG) == 0.0
    assert budget.next_delay(QUICK) == 0.5


def test_restart_policy_gives_up_only_on_start_ups_failing_in_a_row() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=3, backoff=0.5, max_backoff=10, window=10))
    assert [budget.next_delay(NEVER_READY) for _ in range(2)] == [0.5, 1.0]
    # A start-up that worked (even one followed by a quick death) resets the failed start-ups...
    assert budget.next_delay(QUICK) == 2.0
    assert [budget.next_delay(NEVER_READY) for _ in range(2)] == [4.0, 8.0]
    # ...and the third failure in a row gives up.
    assert budget.next_delay(NEVER_READY) is None


def test_restart_policy_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="max_restarts"):
        RestartPolicy(max_restarts=0)
    with pytest.raises(ConfigError, match="window"):
        RestartPolicy(window=0)
    with pytest.raises(ConfigError, match="backoff"):
        RestartPolicy(backoff=-1)
