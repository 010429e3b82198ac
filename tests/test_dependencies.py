"""Every package the installed code imports is one it declares: a runtime dependency, or (for
the one-machine stack's S3 set-up only) one of the ``stack`` extra. An undeclared import works
in the dev venv and breaks the day a user installs the wheel."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGED = ["src/fedchem", "flows", "tasks", "deployments", "data_contracts"]
#: modules that may import a package of the ``stack`` extra (and nothing else may)
STACK_MODULES = {"deployments/s3hub.py"}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports() -> dict[str, set[str]]:
    """Top-level module -> the packaged files that import it (absolute imports only)."""
    out: dict[str, set[str]] = {}
    for root in PACKAGED:
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for n in names:
                    out.setdefault(n.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return out


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    stack = {_name(r) for r in project["optional-dependencies"]["stack"]}
    dists = packages_distributions()
    undeclared, misplaced = {}, {}
    for module, files in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module in ("fedchem", "__future__"):
            continue
        provided = {_name(d) for d in dists.get(module, [])}
        assert provided, f"{module} (imported by {sorted(files)}) is not installed"
        if provided & runtime:
            continue
        if provided & stack and files <= STACK_MODULES:
            continue
        (misplaced if provided & stack else undeclared)[module] = sorted(files)
    assert undeclared == {}, f"imported but not declared in [project.dependencies]: {undeclared}"
    assert misplaced == {}, f"a stack-extra package imported outside the stack: {misplaced}"
