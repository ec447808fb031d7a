"""The documentation checked against the repository: the README's example is examples/quickstart.py,
every relative link (and its anchor) resolves, every ``bash scripts/X`` exists, and the README names
every public name of the facade."""

from __future__ import annotations

import re
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
