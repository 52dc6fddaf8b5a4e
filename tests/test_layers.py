"""The layers of the house, read from the imports (an AST walk, so an import inside a function
counts too): the training side (core/ and loop.py) imports no report, lab, exercise or tool
(what reports, labs and exercises may take from it: tests/test_registry.py); no module grows
past ~350 lines; the loop's functions stay short."""

import ast

import pytest

from conftest import ROOT

PKG = ROOT / "src/minitrain"
TRAINING = ("minitrain.core", "minitrain.loop")
def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)  # `from minitrain.core import x`


def _inside(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda x: str(x))
def test_each_module_imports_only_its_layers(name, path):
    ours = [m for m in _imports(path) if m.startswith("minitrain")]
    if _inside(name, TRAINING):
        bad = [m for m in ours if not _inside(m, TRAINING) and m != "minitrain"]
        assert not bad, f"{name} (training side) imports {bad}"


def test_no_module_is_over_about_350_lines():
    long = {name: n for name, path in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 360}
    assert not long


def test_the_loop_function_is_short():
    tree = ast.parse((PKG / "loop.py").read_text(encoding="utf-8"))
    loop = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Loop")
    for fn in (n for n in loop.body if isinstance(n, ast.FunctionDef)):
        assert fn.end_lineno - fn.lineno + 1 <= 90, fn.name
