"""A named registry for the places users extend (review strategies, network architectures, export formats): one way to
add an entry and to look one up, so each registry module holds only its entries and its own refusal line."""
from __future__ import annotations

from typing import Callable, Dict, List, TypeVar

from .errors import HilaError

T = TypeVar("T")


class NamedRegistry(Dict[str, T]):
    """``name -> entry`` (an entry has a ``name``); a plain dict to read, in registration order."""

    def register(self, entry: T) -> T:
        """Add ``entry`` under its name (one line per entry in the registry's module)."""
        self[getattr(entry, "name")] = entry
        return entry

    def under(self, name: str) -> Callable[[T], T]:
        """``@TABLE.under("name")``: a decorator adding a function (which has no ``name`` of its own) under ``name``."""
        def deco(fn: T) -> T:
            self[name] = fn
            return fn
        return deco

    def lookup(self, name, refusal: Callable[[List[str]], str]) -> T:
        """The entry called ``name``; otherwise a HilaError whose line ``refusal(known names)`` writes."""
        if name not in self:
            raise HilaError(refusal(list(self)))
        return self[name]
