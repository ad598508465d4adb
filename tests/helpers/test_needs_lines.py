"""The *Needs* line of every public function and class of the client modules is true.

A reader copies one function out of ``htc_helpers.py`` (or ``tutorial_helpers.py``) into their own
code; its docstring's ``Needs:`` line names the other names of the module it uses, directly or
through them, so the copy works. Here the lists are computed from the source (its syntax tree)
and compared with what the docstrings say.

What counts: every module-level name (function, class, constant) that the code loads, default
values included; type annotations do not count (``from __future__ import annotations`` keeps them
unevaluated). Attributes of another client module imported as an alias (``htc.get_all_jobs``)
are named with that module (``htc_helpers.get_all_jobs``), not followed further: that function's
own Needs line says the rest.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["htc_helpers.py", "tutorial_helpers.py"]
CLIENT_MODULES = {"htc_helpers", "config"}
NEEDS = re.compile(r"^\s*Needs:(.*?)(?:\n\s*\n|\Z)", re.MULTILINE | re.DOTALL)


def annotation_nodes(tree: ast.AST) -> set[int]:
    """The ids of every node inside an annotation (arguments, returns, annotated assignments)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        roots = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        for root in roots:
            inside.update(id(n) for n in ast.walk(root))
    return inside


def local_names(definition: ast.AST) -> set[str]:
    """Names a definition binds itself: parameters, assignments, loop and comprehension targets, inner defs."""
    names: set[str] = set()
    for node in ast.walk(definition):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not definition:
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def module_needs(path: Path) -> dict[str, set[str]]:
    """For each module-level name, the module-level names (and aliased client modules' attributes) it needs."""
    tree = ast.parse(path.read_text())
    aliases = {
        alias.asname or alias.name: alias.name
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name in CLIENT_MODULES
    }
    definitions: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            definitions[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    definitions[target.id] = node
    skip = annotation_nodes(tree)
    direct: dict[str, set[str]] = {}
    for name, definition in definitions.items():
        own = local_names(definition) if not isinstance(definition, (ast.Assign, ast.AnnAssign)) else set()
        found: set[str] = set()
        for node in ast.walk(definition):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id in definitions and node.id not in own and node.id != name:
                    found.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                found.add(f"{aliases[node.value.id]}.{node.attr}")
        direct[name] = found
    closed: dict[str, set[str]] = {}
    for name in definitions:
        seen, todo = set(), list(direct[name])
        while todo:
            other = todo.pop()
            if other not in seen:
                seen.add(other)
                todo.extend(direct.get(other, ()))
        closed[name] = seen - {name}
    return {name: closed[name] for name in definitions}


def public_definitions(path: Path) -> dict[str, str]:
    """Public functions and classes with their docstrings."""
    tree = ast.parse(path.read_text())
    return {
        node.name: ast.get_docstring(node) or ""
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    }


def stated_needs(docstring: str) -> set[str] | None:
    found = NEEDS.search(docstring)
    if found is None:
        return None
    text = found.group(1).strip().rstrip(".")
    if text == "nothing else":
        return set()
    return {part.strip().strip("`") for part in re.split(r",\s*", " ".join(text.split()))}


def needs_line(names: set[str]) -> str:
    """What the docstring should say, in the module's order of reading: own names first, then other modules."""
    if not names:
        return "Needs: nothing else"
    return "Needs: " + ", ".join(sorted(names, key=lambda n: ("." in n, n.lstrip("_").lower())))


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_states_what_a_copy_needs(module):
    path = ROOT / module
    needs = module_needs(path)
    wrong = []
    for name, docstring in public_definitions(path).items():
        stated = stated_needs(docstring)
        if stated != needs[name]:
            wrong.append(
                f"{name}: says {sorted(stated) if stated is not None else 'nothing'}; {needs_line(needs[name])}"
            )
    assert not wrong, f"{module}: Needs lines that are not true:\n" + "\n".join(wrong)


def test_the_analysis_sees_through_calls_defaults_and_classes(tmp_path):
    """The checker itself, on a module written for it: what it must count and what it must not."""
    source = tmp_path / "sample.py"
    source.write_text(
        """from __future__ import annotations
import htc_helpers as htc
LIMIT = 3
_TABLE = {1: LIMIT}
class Base(Exception): ...
class Child(Base): ...
def _inner(x):
    return _TABLE[x]
def outer(session: Child, n=LIMIT):
    LOCAL = 1
    return _inner(n) + LOCAL, htc.paginate
def shadow(_inner):
    return _inner
def annotated(x: Base) -> Base:
    return x
"""
    )
    needs = module_needs(source)
    assert needs["outer"] == {"LIMIT", "_inner", "_TABLE", "htc_helpers.paginate"}
    assert needs["Child"] == {"Base"}
    assert needs["shadow"] == set() and needs["annotated"] == set()
    assert stated_needs("Does x.\n\nNeeds: `a`, b,\n    c.\n") == {"a", "b", "c"}
    assert stated_needs("Does x.\n\nNeeds: nothing else.") == set()
    assert stated_needs("Does x.") is None
