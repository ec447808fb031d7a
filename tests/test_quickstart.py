"""The README's 30-second example (examples/quickstart.py) run for real, as a user would:
``python examples/quickstart.py --smoke`` from the repository root, a real HTTP child on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0


def test_quickstart_typed_body_answers_200_and_missing_field_answers_422_json() -> None:
    """Steps: run quickstart.py --smoke. Expect {"text": "hello"} answered 200 with the main process's
    upper-cased text, {} answered 422 with FastAPI's JSON naming the missing body field, then a clean exit."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--smoke"],
        cwd=ROOT,
        env={**os.environ, "NO_PROXY": "*"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    output = completed.stdout
    assert completed.returncode == 0, f"exited {completed.returncode}\n{output}\n{completed.stderr}"
    assert re.search(r"^serving on http://127\.0\.0\.1:\d+$", output, re.MULTILINE), output
    answers = dict(re.findall(r"^POST /shout (\{.*?\}) -> (\d+ .*)$", output, re.MULTILINE))
    assert set(answers) == {'{"text": "hello"}', "{}"}, output

    status, _, body = answers['{"text": "hello"}'].partition(" ")
    assert (int(status), json.loads(body)) == (200, {"text": "HELLO"})

    status, _, body = answers["{}"].partition(" ")
    assert int(status) == 422, output
    detail = json.loads(body)["detail"]
    assert [(error["type"], error["loc"]) for error in detail] == [("missing", ["body", "text"])]
    assert output.rstrip().endswith("stopped")
