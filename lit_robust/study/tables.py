"""Rows of strings (the first one the header) written as the Markdown and CSV tables of the reports."""

import csv
import math
import os
from typing import Sequence, Tuple


def format_value(value: float, key: str = "") -> str:
    if math.isnan(value):
        return ""
    return f"{value:.0f}" if key.endswith("epoch") else f"{value:.3f}"


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) as a Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def write_markdown(rows: Sequence[Sequence[str]], path: str) -> None:
    """``rows`` (the first is the header) as a Markdown table in ``path``."""
    with open(path, "w") as f:
        f.write(markdown_table(rows))


def write_table(rows: Sequence[Sequence[str]], out: str, name: str) -> Tuple[str, str]:
    """``rows`` as ``<name>.md`` and ``<name>.csv`` in ``out``."""
    csv_path, md_path = os.path.join(out, f"{name}.csv"), os.path.join(out, f"{name}.md")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    write_markdown(rows, md_path)
    return md_path, csv_path
