"""Fail when code imports a module that no declared dependency provides.

Walks every ``.py`` file under ``service/``, ``bench/``, ``tools/`` and ``tests/``, collects
the top-level name of each absolute import (``import x.y``, ``from x import y``, and literal
``importlib.import_module("x")`` / ``pytest.importorskip("x")`` calls), drops the standard
library and the project's own modules, and looks up which installed distribution provides
each remaining name. That distribution must be named in ``pyproject.toml``: in
``[project].dependencies`` or any of ``[project.optional-dependencies]``. A module that is
only installed by hand, or only arrives as some other package's dependency, fails the check,
because the next fresh machine will not have it.

    python tools/check_imports.py                         # exit 0 clean, 1 with a list
    python tools/check_imports.py --pyproject other.toml  # judge against another declaration

Run it with the interpreter whose environment ``.ci/setup`` built (``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("service", "bench", "tools", "tests")
SKIPPED_PARTS = {"_proto", "node_modules", "__pycache__"}
# Calls whose first argument names a module imported at run time.
DYNAMIC_IMPORTS = {"import_module", "importorskip", "__import__"}
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Use:
    module: str
    path: Path
    line: int


def normalize(name: str) -> str:
    """PEP 503 normalisation: ``PyYAML`` and ``pyyaml``, ``grpcio_tools`` and ``grpcio-tools``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> set[str]:
    """Distribution names in dependencies and every optional-dependencies extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    names = set()
    for requirement in requirements:
        match = REQUIREMENT_NAME.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: cannot read the requirement {requirement!r}")
        names.add(normalize(match.group(1)))
    names.add(normalize(project["name"]))
    return names


def python_files(root: Path, folders: Iterable[str]) -> Iterator[Path]:
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if not SKIPPED_PARTS.intersection(path.relative_to(root).parts):
                yield path


def local_modules(root: Path, folders: Iterable[str]) -> set[str]:
    """Names the project itself provides: its packages and the modules next to the code
    (tests import ``conftest`` and ``deploy_support``, tools import each other)."""
    names = {"service", *folders}
    for folder in ("service", *folders):
        base = root / folder
        if not base.is_dir():
            continue
        for child in base.iterdir():
            if child.suffix == ".py":
                names.add(child.stem)
            elif child.is_dir() and (child / "__init__.py").exists():
                names.add(child.name)
    for path in python_files(root, folders):
        names.add(path.stem)
    return names


def imports(path: Path) -> Iterator[Use]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Use(alias.name.split(".")[0], path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield Use(node.module.split(".")[0], path, node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                name in DYNAMIC_IMPORTS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                yield Use(first.value.split(".")[0], path, node.lineno)


def problems(root: Path, pyproject: Path, folders: Iterable[str] = SCANNED) -> list[str]:
    folders = tuple(folders)
    allowed = declared(pyproject)
    ours = local_modules(root, folders)
    providers = importlib.metadata.packages_distributions()
    found: list[str] = []
    seen: set[tuple[str, Path]] = set()
    for path in python_files(root, folders):
        for use in imports(path):
            module = use.module
            if module in sys.stdlib_module_names or module in ours or module == "__future__":
                continue
            if (module, path) in seen:
                continue
            seen.add((module, path))
            where = f"{path.relative_to(root)}:{use.line}"
            dists = providers.get(module, [])
            if not dists:
                found.append(
                    f"{where}: imports {module!r}, which no installed distribution provides "
                    f"(declare the package that provides it in {pyproject.name})"
                )
            elif not allowed.intersection(normalize(d) for d in dists):
                found.append(
                    f"{where}: imports {module!r} from {', '.join(sorted(set(dists)))}, "
                    f"which {pyproject.name} does not declare"
                )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (default: this one)")
    parser.add_argument("--pyproject", type=Path, help="declarations to judge against")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    pyproject = (args.pyproject or root / "pyproject.toml").resolve()
    found = problems(root, pyproject)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} import(s) not covered by a declared dependency", file=sys.stderr)
        return 1
    print(f"every import under {', '.join(SCANNED)} comes from a declared dependency")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
