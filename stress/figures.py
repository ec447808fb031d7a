"""The figures a capacity check measured, as small aligned tables."""

from __future__ import annotations


class Figures:
    def __init__(self) -> None:
        self.tables: list[str] = []

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = [f"== {title}", "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        text = "\n".join(lines)
        self.tables.append(text)
        print(f"\n{text}")
