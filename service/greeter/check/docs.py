"""docs/check.md's table of cases, made from the registry (a test keeps the page in step):

python -m greeter.check.docs      # print the table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from greeter.check.cases import GATEWAYS, registry

TABLE_START = "<!-- cases table: python -m greeter.check.docs -->"
TABLE_END = "<!-- end of cases table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "—"


def markdown_table() -> str:
    """One row per case: name, what it proves, the setting of each gateway that breaks it,
    the fix."""
    head = ["case", "what it proves", *GATEWAYS, "fix"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in registry().values():
        cells = [f"`{case.name}`", case.proves, *(case.breaks.get(g, "") for g in GATEWAYS)]
        lines.append("| " + " | ".join(_cell(c) for c in [*cells, case.fix]) + " |")
    return "\n".join(lines) + "\n"


def with_table(page: str) -> str:
    """``page`` with the current table between its markers."""
    start, end = page.index(TABLE_START) + len(TABLE_START), page.index(TABLE_END)
    return f"{page[:start]}\n{markdown_table()}{page[end:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description="docs/check.md's table of cases")
    parser.add_argument("--write", metavar="PAGE", help="put the table into this page")
    args = parser.parse_args()
    if args.write:
        page = Path(args.write)
        page.write_text(with_table(page.read_text()))
    else:
        print(markdown_table(), end="")


if __name__ == "__main__":
    main()
