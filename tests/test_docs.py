"""The documentation checked against the repository: the README's example is examples/quickstart.py
and its loop ends as a user ends it, every relative link (and its anchor) resolves, every
``bash scripts/X`` exists, the README names every public name of the facade and says what the
default host exposes, docs/api.md documents every exported name, builder method (of every section
the builder has) and ``Server`` member, docs/design.md's status table holds every status the code
answers with and the limits' defaults, the constants the docs name exist, and measured figures
live in docs/performance.md rather than in the library's comments."""

from __future__ import annotations

import dataclasses
import inspect
import re
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

import isolated_api

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _without_code(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _without_code(path.read_text(encoding="utf-8")), re.MULTILINE)
    return {_slug(heading) for heading in headings}


def quickstart_as_shown() -> str:
    """examples/quickstart.py between its README markers, without the lines that exist for --smoke."""
    source = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    region = source.split("# README: begin\n", 1)[1].split("# README: end\n", 1)[0]
    region = re.sub(r"# --smoke: begin\n.*?# --smoke: end\n", "", region, flags=re.DOTALL)
    return "".join(line for line in region.splitlines(keepends=True) if not line.rstrip().endswith("# --smoke"))


def test_docs_readme_example_is_examples_quickstart() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"<!-- examples/quickstart\.py -->\n```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert shown is not None, "README.md: no ```python block after <!-- examples/quickstart.py -->"
    assert shown[1] == quickstart_as_shown()


def test_docs_relative_links_point_to_existing_files_and_anchors() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(_without_code(doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    assert len(DOCS) >= 4, "README.md and docs/design.md, operations.md, performance.md"


def test_docs_every_script_mentioned_exists() -> None:
    missing = []
    for doc in DOCS:
        for script in re.findall(r"bash (scripts/[\w.-]+)", doc.read_text(encoding="utf-8")):
            if not (ROOT / script).is_file():
                missing.append(f"{doc.relative_to(ROOT)}: bash {script}")
    assert not missing, "\n".join(missing)


def test_docs_readme_names_every_public_name() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unnamed = [name for name in isolated_api.__all__ if f"`{name}" not in readme]
    assert not unnamed, f"README.md's public API table misses {unnamed}"


def test_docs_quickstart_loop_ends_as_a_user_ends_it() -> None:
    """The README's loop has no end marker that nothing sends: --smoke ends it as Ctrl-C does, and
    the id is the ``new_request_id()`` the docs recommend."""
    source = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    shown = quickstart_as_shown()
    smoke_only = [line for line in source.splitlines() if line not in shown.splitlines()]
    assert not [line for line in smoke_only if "request_q.put" in line], "--smoke must not end the loop by a message"
    assert "is not None" not in shown and "None ends" not in shown
    assert "except KeyboardInterrupt" in shown
    assert "new_request_id()" in shown and "uuid" not in shown


def _code_spans(text: str) -> str:
    """Every `code span` and fenced block of a markdown text, joined: where a name counts as documented."""
    return "\n".join([*re.findall(r"`([^`\n]+)`", FENCE.sub("", text)), *FENCE.findall(text)])


def _undocumented(names: Iterable[str], text: str) -> list[str]:
    code = _code_spans(text)
    return [name for name in names if not re.search(rf"(?<!\w){re.escape(name)}\b", code)]


def _public_methods(cls: type) -> list[str]:
    """Inherited ones too: a section built on a shared base class still has to document them."""
    return sorted(name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name)))


def builder_sections() -> dict[str, type]:
    """The builder's sections (``.routes``, ``.subprocess``, ...) as its properties give them: a new
    section is covered without touching this test."""
    builder = isolated_api.ServerBuilder("docs")
    return {
        name: type(getattr(builder, name))
        for name in dir(isolated_api.ServerBuilder)
        if isinstance(inspect.getattr_static(isolated_api.ServerBuilder, name), property)
    }


def test_docs_api_md_documents_every_exported_name() -> None:
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = _undocumented(isolated_api.__all__, api)
    assert not missing, f"docs/api.md does not document these names of isolated_api.__all__: {missing}"


def test_docs_api_md_documents_every_builder_method() -> None:
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    sections = builder_sections()
    assert {"routes", "subprocess", "uvicorn"} <= set(sections), sections
    missing = [f"ServerBuilder.{name}" for name in _undocumented(_public_methods(isolated_api.ServerBuilder), api)]
    for section, configurer in sections.items():
        missing += [f".{section}.{name}" for name in _undocumented(_public_methods(configurer), api)]
        if not re.search(rf"`\.{section}\b", api):
            missing.append(f".{section} (the section itself)")
    assert not missing, f"docs/api.md does not document these builder methods: {missing}"


def test_docs_api_md_documents_every_public_member_of_server() -> None:
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    members = sorted(name for name in vars(isolated_api.Server) if not name.startswith("_"))
    missing = _undocumented(members, api)
    assert not missing, f"docs/api.md does not document these members of Server: {missing}"


def _design_status_table() -> str:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design.split("## HTTP status per condition", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def _refusal_statuses() -> set[int]:
    """The statuses the worker's request limits answer with, read from the code that sends them."""
    found: set[int] = set()
    for module in ("head_limits.py", "body_limits.py"):
        source = (ROOT / "isolated_api" / "worker" / module).read_text(encoding="utf-8")
        found.update(
            int(code) for code in re.findall(r"(?:_refuse|_write_refusal|send_refusal)\((?:send, )?(\d{3})", source)
        )
    return found


def test_docs_design_status_table_has_every_status_the_code_answers() -> None:
    table = _design_status_table()
    errors = [getattr(isolated_api, name) for name in isolated_api.__all__]
    statuses = {
        error.status_code for error in errors if isinstance(error, type) and issubclass(error, isolated_api.IPCError)
    }
    statuses |= _refusal_statuses()
    assert {413, 414, 431, 408} <= statuses, statuses
    missing = sorted(status for status in statuses if not re.search(rf"\b{status}\b", table))
    assert not missing, f"docs/design.md's status table lacks {missing}"
    limits = [field.name for field in dataclasses.fields(isolated_api.RequestLimits)] + ["max_message_size"]
    unnamed = [name for name in limits if f"`{name}`" not in table]
    assert not unnamed, f"docs/design.md's status table does not name the limits {unnamed}"


# A measured figure: microseconds, a percentage, a speed-up, a range of milliseconds, a count of
# instructions, a latency percentile with its value.
MEASURED = re.compile(
    r"\d\s?(?:us|µs)\b|\d\s?%|\d(?:\.\d+)?x (?:faster|slower)|\d-\d+(?:\.\d+)? ?ms\b|\d[\d,]*k? (?:CPU )?instructions"
    r"|\bp(?:50|99)\b[^.]*\d"
)


def _comments_and_docstrings(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as source:
        for token in tokenize.tokenize(source.readline):
            is_docstring = token.type == tokenize.STRING and token.string.lstrip("rbuRBU").startswith(('"""', "'''"))
            if token.type == tokenize.COMMENT or is_docstring:
                yield token.start[0], token.string


def test_docs_measured_figures_live_in_performance_md_not_in_the_code() -> None:
    """Figures go stale at the next measurement: the library's comments and docstrings say why and
    point to docs/performance.md, where the figures are kept and replaced."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {match[0]!r}"
        for path in sorted((ROOT / "isolated_api").rglob("*.py"))
        for line, text in _comments_and_docstrings(path)
        for match in MEASURED.finditer(text)
    ]
    assert not found, "measured figures in the library (move them to docs/performance.md):\n" + "\n".join(found)
    performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert "## Figures behind the code" in performance


def test_docs_every_constant_named_in_the_docs_exists_in_the_code() -> None:
    code = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("isolated_api", "features", "tests", "stress", "examples")
        for path in (ROOT / folder).rglob("*.py")
    )
    gone = [
        f"{doc.relative_to(ROOT)}: {name}"
        for doc in DOCS
        for name in sorted(set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", doc.read_text(encoding="utf-8"))))
        if not re.search(rf"\b{name}\b", code)
    ]
    assert not gone, "the docs name constants the code no longer has:\n" + "\n".join(gone)


def test_docs_readme_says_what_the_default_host_exposes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    production = readme.split("## In production", 1)[1].split("\n## ", 1)[0]
    default_host = isolated_api.ApiConfig().host
    assert f"default host is `{default_host}`" in production, "README: say what the default host exposes"
    assert '`.with_host("127.0.0.1")`' in production, "README: say how to serve this machine only"


def _as_written(value: object) -> str:
    """A default as the docs write it: 1 MiB, 32 KiB, 100, 30 s."""
    if isinstance(value, float):
        return f"{value:g} s"
    assert isinstance(value, int), value
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return str(value)


def test_docs_design_status_table_quotes_the_request_limits_defaults() -> None:
    rows = _design_status_table().splitlines()
    wrong = []
    for field in dataclasses.fields(isolated_api.RequestLimits):
        row = next((row for row in rows if f"`{field.name}`" in row), "")
        written = _as_written(field.default)
        if f"`{field.name}` ({written}" not in row:
            wrong.append(f"{field.name}: the default is {written}")
    assert not wrong, f"docs/design.md's status table: {wrong}"
