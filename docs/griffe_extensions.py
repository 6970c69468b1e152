"""Griffe extensions for ``make docs``'s API reference.

- :class:`AdaptersFolder`: the ``adapters/`` folder is the package ``splathead.adapters``
  (``package-dir`` in pyproject.toml), a mapping griffe's finder does not read, so it is loaded
  here, beside ``splathead``'s own modules.
- :class:`PlainRoles`: the docstrings' Sphinx roles (``:class:`~splathead.Camera```) shown as
  code (``Camera``), since Markdown has no roles.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe


class AdaptersFolder(griffe.Extension):
    """Attach ``adapters/*.py`` to ``splathead`` as ``splathead.adapters`` while it is visited."""

    def on_module_members(self, *, mod: griffe.Module, agent: Any, **kwargs: Any) -> None:
        if mod.path != "splathead" or not isinstance(agent, griffe.Visitor):
            return
        folder = Path(mod.filepath).parents[1] / "adapters"
        adapters = _visit(agent, folder / "__init__.py", "adapters", parent=mod)
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__":
                _visit(agent, path, path.stem, parent=adapters)


def _visit(agent: griffe.Visitor, path: Path, name: str, *, parent: griffe.Module) -> griffe.Module:
    module = griffe.visit(
        name,
        filepath=path,
        code=path.read_text(encoding="utf-8"),
        extensions=agent.extensions,
        parent=parent,
        docstring_parser=agent.docstring_parser,
        docstring_options=agent.docstring_options,
        lines_collection=agent.lines_collection,
        modules_collection=agent.modules_collection,
    )
    parent.set_member(name, module)
    return module


_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):`(~?)([^`]+)`")


def _plain(match: re.Match) -> str:
    target = match[2].split(".")[-1] if match[1] else match[2]
    return f"`{target}`"


class PlainRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring as ```target``` (``~`` keeps the last part)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
