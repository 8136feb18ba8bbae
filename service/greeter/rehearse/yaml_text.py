"""A small YAML emitter for configuration files people read (the Envoy bootstrap): block
style from plain dicts, lists and scalars, strings JSON-quoted (valid YAML), no dependency."""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of plain dicts, lists and scalars (strings JSON-quoted), for a file a
    person reads; Envoy parses it like any YAML."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for name, item in value.items():
            key = name if _PLAIN_KEY.match(name) else json.dumps(name)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(item, 0)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 1)
            lines.append(
                f"{pad}- {text.lstrip()}" if isinstance(item, dict | list) else f"{pad}- {text}"
            )
        return "\n".join(lines)
    return _yaml_scalar(value)
