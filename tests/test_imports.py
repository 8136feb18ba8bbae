"""tools/check_imports.py: every module the code imports comes from a declared dependency."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

CHECK = ROOT / "tools" / "check_imports.py"


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def without(requirement: str, tmp_path: Path) -> Path:
    """A copy of pyproject.toml with one requirement taken out of every list."""
    text = (ROOT / "pyproject.toml").read_text()
    pattern = re.compile(rf'^\s*"{re.escape(requirement)}[^"]*",\n', re.MULTILINE)
    inline = re.compile(rf'"{re.escape(requirement)}[^"]*",?\s*')
    changed = inline.sub("", pattern.sub("", text))
    assert changed != text, f"{requirement} is not declared in pyproject.toml"
    copy = tmp_path / "pyproject.toml"
    copy.write_text(changed)
    return copy


def test_the_tree_imports_only_declared_dependencies() -> None:
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "comes from a declared dependency" in result.stdout


def test_a_benchmark_peer_taken_out_of_the_declarations_fails(tmp_path: Path) -> None:
    # The shape of the fresh-machine failure: grpclib imported by bench/, declared nowhere.
    result = check("--pyproject", str(without("grpclib", tmp_path)))
    assert result.returncode == 1
    assert "bench/servers/grpclib_server.py" in result.stdout
    assert "'grpclib'" in result.stdout


def test_a_runtime_dependency_taken_out_fails(tmp_path: Path) -> None:
    result = check("--pyproject", str(without("prometheus-client", tmp_path)))
    assert result.returncode == 1
    assert "service/greeter/metrics.py" in result.stdout
    assert "'prometheus_client'" in result.stdout


def test_a_module_nothing_provides_fails(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = []\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import os\nimport demo_helper\nimport pytest\n"
        "np = pytest.importorskip('no_such_module_anywhere')\n"
    )
    (tmp_path / "tests" / "demo_helper.py").write_text("")
    for folder in ("service", "bench", "tools"):
        (tmp_path / folder).mkdir()
    result = check("--root", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("'no_such_module_anywhere'" in line and "no installed" in line for line in lines)
    assert any("'pytest'" in line and "does not declare" in line for line in lines)
    # The standard library and the project's own modules are never reported.
    assert not any("'os'" in line or "'demo_helper'" in line for line in lines)
