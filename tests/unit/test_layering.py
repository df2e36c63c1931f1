"""The layering contract (docs/architecture.md) holds: libraries never import the controller."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


PROJECT_PACKAGES = ("controller", "lab", "common", "bgp", "ipam", "felix_like", "datastore", "datamodel")
# The one dynamic import allowed: out-of-tree lab image handlers a user names in TABBY_LAB_PLUGINS.
DYNAMIC_IMPORT_ALLOWED = {("lab/kinds.py", "load_plugins")}


def _dynamic_imports(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every importlib.import_module / __import__ / importlib.util call."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Call):
                target = ast.unparse(child.func)
                if target in {"importlib.import_module", "import_module", "__import__"} or target.startswith(
                    ("importlib.util.", "importlib.machinery.")
                ):
                    found.append((func, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_no_project_module_is_imported_dynamically_around_the_contracts() -> None:
    """import-linter only sees static imports: a string-named import would dodge every contract above."""
    offenders = []
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for func, line in _dynamic_imports(path):
                if (rel, func) not in DYNAMIC_IMPORT_ALLOWED:
                    offenders.append(f"{rel}:{line} in {func}")
    assert not offenders, "dynamic imports: " + ", ".join(offenders)


def test_the_dynamic_import_finder_sees_a_dynamic_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\n\ndef f():\n    importlib.import_module('controller.node')\n    __import__('lab')\n"
    )
    assert _dynamic_imports(probe) == [("f", 4), ("f", 5)]
