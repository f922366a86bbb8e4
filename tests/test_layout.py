"""The package's import structure: no import cycles, no private names across packages.

Read from the source with ``ast`` (imports inside functions count too: an import moved into
a function to dodge a cycle is still a cycle).  A *package* here is a top-level unit of
mlmext: a subpackage (``mlmext.glmm``, ``mlmext.inference``, ...) or a module directly in
``mlmext/`` (``mlmext.base``, ``mlmext.lmm``, ...); a private name has a leading underscore.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlmext")


def _modules():
    """{module name: path} for every module of the package."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))
                name = rel[:-3].replace(os.sep, ".")
                if name.endswith(".__init__"):
                    name = name[: -len(".__init__")]
                out[name] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _is_package(name):
    return MODULES[name].endswith("__init__.py")


def _resolve(importer, level, module):
    """Absolute name of ``from <level dots><module> import ...`` inside ``importer``."""
    if level == 0:
        return module
    base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name):
    """(target module, imported name or None, line) for each mlmext import in a module."""
    tree = ast.parse(open(MODULES[name], encoding="utf-8").read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mlmext":
                    out.append((a.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            if target.split(".")[0] != "mlmext":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:                 # from package import submodule
                    out.append((sub, None, node.lineno))
                else:
                    out.append((target, a.name, node.lineno))
    return out


def _package(name):
    """The top-level unit a module belongs to: ``mlmext.X`` (a module or a subpackage)."""
    return ".".join(name.split(".")[:2])


def _graph():
    g = {}
    for name in MODULES:
        deps = set()
        for target, _, _ in _imports(name):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                deps.add(target)
        g[name] = deps
    return g


def _cycles(g):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_import_scan_sees_the_package():
    assert {"mlmext.lmm", "mlmext.base", "mlmext.glmm.model", "mlmext.ordinal.model"} <= set(MODULES)
    assert "mlmext.base" in _graph()["mlmext.lmm"]


def test_no_import_cycles_between_modules():
    assert _cycles(_graph()) == []


def test_no_import_cycles_between_packages():
    g = {}
    for name, deps in _graph().items():
        a = _package(name)
        g.setdefault(a, set()).update(_package(d) for d in deps if _package(d) != a)
    assert _cycles(g) == []


def test_no_private_names_across_packages():
    bad = []
    for name in MODULES:
        for target, imported, line in _imports(name):
            if imported and imported.startswith("_") and _package(target) != _package(name):
                bad.append(f"{name}:{line} imports {imported} from {target}")
    assert bad == []


def _module_aliases(name, tree):
    """{local name: mlmext module} for modules imported as names (``from .. import laplace as lp``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:
                    out[a.asname or a.name] = sub
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    out[a.asname] = a.name
    return out


def test_no_private_attributes_of_other_packages():
    """``lp._factor`` is as private as ``from laplace import _factor``."""
    bad = []
    for name in MODULES:
        tree = ast.parse(open(MODULES[name], encoding="utf-8").read())
        aliases = _module_aliases(name, tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and _package(aliases[node.value.id]) != _package(name)):
                bad.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert bad == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small_or_say_why(name):
    src = open(MODULES[name], encoding="utf-8").read()
    n = src.count("\n")
    doc = ast.get_docstring(ast.parse(src)) or ""
    assert n <= 520 or "Why this module is long" in doc, f"{name} has {n} lines (about 500 at most)"
