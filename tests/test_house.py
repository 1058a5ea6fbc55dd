"""The kernel's structure as DESIGN.md states it: arrows point one way, no import cycles, no
module named like the function it exports, no torch in the package."""

import ast
import pathlib

import jaxplain

ROOT = pathlib.Path(jaxplain.__file__).parent


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(("jaxplain", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module, module: str) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import in ``tree``."""
    top = set(map(id, tree.body))
    package = module if module.endswith(("jaxplain", "methods")) else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.append((base, id(node) in top))
    return found


def test_kernel_imports_point_one_way():
    mods = _modules()
    graph = {}
    for name, tree in mods.items():
        imports = _imports(tree, name)
        if not name.startswith("jaxplain.cli"):  # the command line is the one kernel package that loads models lazily
            assert not [m for m, _ in imports if m.startswith(("jaxplain.models", "torch", "captum"))], name
            late = [m for m, top in imports if m.startswith("jaxplain") and not top]
            assert not late, f"{name} imports {late} inside a function"
        graph[name] = {m for m, _ in imports if m in mods and m != name and not m.endswith(("jaxplain", ".methods"))}
    seen, done = set(), set()

    def visit(node, path):
        assert node not in seen or node in done, f"import cycle: {' -> '.join(path + [node])}"
        if node in done:
            return
        seen.add(node)
        for nxt in graph[node]:
            visit(nxt, path + [node])
        done.add(node)

    for node in graph:
        visit(node, [])


def test_no_module_shares_a_public_functions_name():
    """A package's public function never has the name of one of its submodules (``jaxplain.explain``
    must not be both a function and a module): the import would shadow one by the other."""
    import importlib

    for package in [n for n in _modules() if (ROOT / pathlib.Path(*n.split(".")[1:]) / "__init__.py").is_file()
                    or n == "jaxplain"]:
        ns = importlib.import_module(package)
        subs = {n.rsplit(".", 1)[-1] for n in _modules() if n.rsplit(".", 1)[0] == package and n != package}
        functions = {n for n in getattr(ns, "__all__", dir(ns)) if not n.startswith("_") and callable(getattr(ns, n, None))
                     and not isinstance(getattr(ns, n), type) and getattr(getattr(ns, n), "__module__", None) != package}
        clash = {n for n in subs & functions if not isinstance(getattr(ns, n), type(importlib))}
        assert not clash, (package, clash)
