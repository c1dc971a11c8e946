"""Imports only run downward: backends < repo/engine/dockertar < transfer < commands < cli.

Every module under dogestry/ is parsed; every import in it (at the top or inside a function,
and every string given to importlib.import_module) is checked against the layer of the
module it names. Command modules never import each other: what two commands share belongs
in the library below them.
"""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dogestry")

# module (dotted, without the "dogestry." prefix) or package prefix -> layer
LAYERS = [
    ("", 0),  # dogestry/__init__.py: the version
    ("errors", 0), ("digests", 0), ("refs", 0), ("records", 0), ("config", 0), ("compress", 0),
    ("pipeline", 0), ("progress", 0), ("durations", 0), ("tlsfiles", 0), ("jsontext", 0),
    ("backends", 1),
    ("image", 2), ("layerstore", 2), ("repo", 2), ("engine", 2), ("dockertar", 2),
    ("transfer", 3), ("pullthrough", 3), ("fleet", 3), ("sharing", 3), ("context", 3), ("serve", 3), ("operations", 3),
    ("completion", 4),
    ("commands", 5),
    ("cli", 6),
]


def layer_of(module):
    best = None
    for name, layer in LAYERS:
        if module == name or (name and module.startswith(name + ".")):
            if best is None or len(name) > len(best[0]):
                best = (name, layer)
    if best is None and module == "":
        return 0
    assert best is not None, f"dogestry.{module} has no layer in tests/test_layers.py: add it"
    return best[1]


def _modules():
    for dirpath, _, filenames in os.walk(PACKAGE):
        for filename in filenames:
            if filename.endswith(".py"):
                path = os.path.join(dirpath, filename)
                rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                is_package = rel.endswith("__init__")
                module = rel[: -len(".__init__")] if rel.endswith(".__init__") else ("" if rel == "__init__" else rel)
                yield module, is_package, path


def _imports(module, is_package, path):
    """Dotted names (relative to dogestry) that the module imports."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and (node.module == "dogestry" or node.module.startswith("dogestry.")):
                    module_name = node.module[len("dogestry."):] if node.module != "dogestry" else ""
                    for alias in node.names:
                        yield ".".join(filter(None, [module_name, alias.name])), node.lineno
                continue
            parent = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = parent + (node.module.split(".") if node.module else [])
            for alias in node.names:  # a name may be a submodule: _resolve finds out
                yield ".".join(target + [alias.name]), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dogestry."):
                    yield alias.name[len("dogestry."):], node.lineno
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            arg = node.args[0] if node.args else None
            text = None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                text = arg.value
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                text = arg.values[0].value.rstrip(".")  # f"dogestry.commands.{name}": the package
            assert text is not None, f"{path}:{node.lineno}: import_module of something this test cannot read"
            if text.startswith("dogestry."):
                yield text[len("dogestry."):], node.lineno


def _resolve(name):
    """A name like `commands.share` or `completion.remotes` -> the module it lives in."""
    parts = name.split(".")
    while parts:
        candidate = os.path.join(PACKAGE, *parts)
        if os.path.isdir(candidate) or os.path.exists(candidate + ".py"):
            return ".".join(parts)
        parts.pop()
    return ""


def test_imports_only_run_downward_and_commands_never_import_each_other():
    wrong = []
    for module, is_package, path in _modules():
        mine = layer_of(module)
        for name, line in _imports(module, is_package, path):
            target = _resolve(name)
            if layer_of(target) > mine:
                wrong.append(f"dogestry/{os.path.relpath(path, PACKAGE)}:{line} imports {target or 'dogestry'} "
                             f"(layer {layer_of(target)}) from layer {mine}")
            if (module.startswith("commands.") and target.startswith("commands.") and target != module):
                wrong.append(f"dogestry/{os.path.relpath(path, PACKAGE)}:{line}: command module imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above cannot pass vacuously: it catches a planted upward import."""
    planted = tmp_path / "repo.py"
    planted.write_text("from .transfer import push\n\ndef f():\n    from .commands import push as p\n")
    found = [(_resolve(n), line) for n, line in _imports("repo", False, str(planted))]
    assert ("transfer", 1) in found and ("commands.push", 4) in found
    assert all(layer_of(t) > layer_of("repo") for t, _ in found)


def test_the_checker_sees_a_command_importing_another(tmp_path):
    planted = tmp_path / "pull.py"
    planted.write_text("from .push import run\nfrom . import remote_argument\n")
    found = [_resolve(n) for n, _ in _imports("commands.pull", False, str(planted))]
    assert found == ["commands.push", "commands"]
