"""The test-side process runner: a process that does not exit in time fails the test with where
each of its threads stood (faulthandler's dump on SIGABRT), so a hang is diagnosable from the log."""

from __future__ import annotations

import re

import pytest

from tests.cli_process import CliProcess

_SLEEPER = "import time\nprint('asleep', flush=True)\ndef stuck_here():\n    time.sleep(600)\nstuck_here()\n"


def test_cli_process_wait_reports_the_stacks_of_a_process_that_hangs() -> None:
    with CliProcess(["-c", _SLEEPER]) as cli:
        cli.wait_for(re.compile("^asleep$"), 30)
        with pytest.raises(AssertionError, match=r"did not exit within 0\.5 s") as failure:
            cli.wait(0.5)
        assert "in stuck_here" in str(failure.value), str(failure.value)
        assert cli.process.poll() is not None
