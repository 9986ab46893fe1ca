"""Registries: exact-key lookup, did-you-mean errors, auto-discovery of a package folder.

A method is the file ``methods/<key>.py`` and a task ``tasks/<key>.py``; each module registers
itself with a decorator when imported. :meth:`Registry.discover` imports every module of the folder
once, so adding a file is all it takes to add an entry (and installed plugins can register through
the ``cxrbench.<kind>`` entry point group).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cxrbench.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object mapping with exact keys.

    ``package`` (e.g. ``"cxrbench.methods"``) is the folder whose modules are imported on first
    lookup; modules whose name starts with ``_`` or equals ``base`` are skipped.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("convirt")``. A duplicate name is an error."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if not name or name != name.strip() or name.lower() != name:
            raise RegistryError(f"{self.kind} names are lower-case without spaces, got {name!r}")
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise RegistryError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def discover(self) -> None:
        """Import every module of ``package`` and the ``cxrbench.<kind>s`` entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        assert self.package is not None
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name == "base":
                continue
            importlib.import_module(f"{self.package}.{info.name}")
        for ep in importlib.metadata.entry_points(group=f"cxrbench.{self.kind}s"):
            ep.load()

    def get(self, name: str) -> T:
        """Look ``name`` up exactly; unknown names raise :class:`RegistryError` with suggestions."""
        self.discover()
        try:
            return self._entries[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "(none)"
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}"
        ) from None

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)
