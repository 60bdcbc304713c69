"""No module of zpool reaches into another module's private attributes, beyond a short allow-list.

``obj._name`` where ``obj`` is not ``self``/``cls`` and no class or function
of the same module defines ``_name`` is a reach across modules: the
facades, views and results used to talk through each other's privates,
through parameters typed ``Any``, so that neither the import-linter layers
nor mypy could see who depends on what. Seams are typed methods now
(``zpool.client.submitter.Submitter``, the decorators' ``Runner``); this
test keeps it so. A new entry in :data:`ALLOWED` needs a reason.
"""

from __future__ import annotations

import ast
import pathlib

import zpool

PACKAGE = pathlib.Path(zpool.__file__).parent

# (module, attribute): why it is read from outside the module that defines it.
ALLOWED = {
    # The standard library's own privates, each used knowingly.
    ("zpool/_process.py", "_args_from_interpreter_flags"): "the interpreter options spawn passes on (multiprocessing)",
    ("zpool/_future.py", "_base"): "concurrent.futures' state names (PENDING, FINISHED), not re-exported",
    ("zpool/_future.py", "_release_save"): "Condition.wait's protocol on the C RLock (tested in test_fast_paths)",
    ("zpool/_future.py", "_acquire_restore"): "Condition.wait's protocol on the C RLock (tested in test_fast_paths)",
    ("zpool/_sync_imports.py", "_getframe"): "sys._getframe: the frame of the `with` block whose imports are recorded",
    # zpool's own, across modules on purpose.
    ("zpool/_scheduling.py", "_renewed"): "resubmit makes a result of the same kind (each kind knows its arguments)",
}


# Public API that starts with an underscore (so as not to clash with field names).
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def _own_names(tree: ast.Module) -> set[str]:
    """Names the module itself defines: functions, methods, classes, attributes it assigns, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_"):
            names.add(node.value)  # __slots__ entries
    return names


def _reaches() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "zpool/" + path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _own_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in own or attr in NAMEDTUPLE_API:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.setdefault((module, attr), []).append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_reaches_into_another_modules_privates():
    reaches = _reaches()
    new = {key: where for key, where in reaches.items() if key not in ALLOWED}
    assert not new, (
        "private attributes of another module used (give the owner a typed method instead, or add an entry"
        " with its reason to ALLOWED):\n"
        + "\n".join(f"  {module}: {', '.join(where)}" for (module, _), where in sorted(new.items()))
    )


def test_the_allow_list_holds_only_what_is_still_used():
    reaches = _reaches()
    stale = sorted(key for key in ALLOWED if key not in reaches)
    assert not stale, f"remove these entries from ALLOWED, nothing uses them any more: {stale}"


def test_the_allow_list_is_short():
    assert len(ALLOWED) <= 12
