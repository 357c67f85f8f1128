"""errors.py's docstring draws the exception tree that ARCHITECTURE.md sends readers to: it must name
every class the module defines, under its real parent, and ``__all__`` must export each one."""

from __future__ import annotations

import inspect
import re

from graven import errors


def _classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, errors.GravenError)
        and value.__module__ == errors.__name__
    }


def test_the_docstring_tree_names_every_error_under_its_parent() -> None:
    doc = errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        found = re.match(r"^(\s*(?:[│├└─ ]*))([A-Z][A-Za-z]+Error)\b", line)
        if found is None:
            continue
        depth, name = len(found.group(1)), found.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    for name, cls in _classes().items():
        if cls is errors.GravenError:
            continue
        assert name in parents, f"{name} is not drawn in errors.py's docstring"
        assert parents[name] == cls.__bases__[0].__name__, f"{name} is drawn under {parents[name]}"


def test_all_exports_every_error() -> None:
    assert set(_classes()) <= set(errors.__all__)
