"""Small value classes written by hand, for modules on the start-up path of a command.

``@dataclass`` makes a class by generating the source of its methods and ``exec()``-ing it: ~0.3 ms per
class in a fresh process, and a deploy used to create ~55 of them before doing any work. A class that
derives from :class:`Frozen` (or :class:`Record`) names its fields, in order, in ``_fields`` and writes
its ``__init__`` by hand, with every field a parameter in that order (a frozen one sets them with
``object.__setattr__``, as a frozen dataclass does). It then behaves as the dataclass it replaces:

- ``==`` compares the fields of two instances of exactly the same class (else NotImplemented);
- ``repr`` is ``Name(field=value, ...)``;
- :class:`Frozen`: hashable (the hash of the tuple of fields), assignment and deletion raise
  :class:`FrozenInstanceError` (an AttributeError; not the dataclasses class of that name), and copy / pickle
  rebuild it through ``__init__``;
- :class:`Record`: mutable and unhashable (``__hash__`` None).

What is not there: ``dataclasses.fields``, ``asdict`` and ``replace``, and mypy's check of assignments
to a frozen field. A class that needs those stays a dataclass.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any, ClassVar

__all__ = ["Frozen", "FrozenInstanceError", "Record"]


class FrozenInstanceError(AttributeError):
    """An assignment to (or deletion of) a field of a frozen value. graven's own AttributeError, not
    ``dataclasses.FrozenInstanceError`` (importing dataclasses is what these classes avoid): catch
    AttributeError to handle both."""


class _Fields:  # noqa: PLW1641 - Record leaves __hash__ None (mutable), Frozen defines it
    """Equality and repr over ``_fields``."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # ``case FileEntry(path, sha256, ...)`` as for a dataclass
        setattr(cls, "__match_args__", cls._fields)  # noqa: B010 (set per subclass at run time)

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, _Fields):
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({shown})"


class Record(_Fields):
    """Equality and repr over ``_fields``; mutable, so unhashable."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]


class Frozen(_Fields):
    """Equality and repr over ``_fields``; the fields cannot change after ``__init__``; hashable."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, self._values())
