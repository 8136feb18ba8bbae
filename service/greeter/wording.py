"""Numbers in words for people: ``1 call``, ``2,925 calls``."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` with thousands separators and ``word`` in the right number (``many``: the plural
    when it is not ``word + "s"``)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"
