"""The house rules of llmrec's own code, checked statically: no module imports another's private names, and a
function-local import of an llmrec module says why it is lazy (weight or a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "llmrec"


def _internal(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("llmrec")
    return any(a.name.startswith("llmrec") for a in node.names)


def _modules() -> list[tuple[Path, list[str], ast.Module]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        out.append((path, text.splitlines(), ast.parse(text)))
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _internal(node):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {alias.name}")
    assert found == []


def test_function_local_imports_of_llmrec_modules_are_marked_lazy() -> None:
    unmarked = []
    for path, lines, tree in _modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)) or not _internal(node):
                    continue
                own = lines[node.lineno - 1: node.end_lineno]
                k = node.lineno - 2  # the comment above the block of imports this one is part of
                while k >= 0 and lines[k].strip().startswith(("from ", "import ", ")")) and "# lazy" not in lines[k]:
                    k -= 1
                if not any("# lazy:" in line for line in own) and not (k >= 0 and "# lazy:" in lines[k]):
                    unmarked.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unmarked == [], "move these to the top of the module, or say why they are lazy with '# lazy: reason'"
