"""Closed positions read from a snapshot, decoded on the first read of one.

Most start-ups never look at closed history, yet at 1M events its JSON was most of
positions.json and decoding it most of a start-up's CPU. Start-up reads only the closed
positions' ids (what the fold asks: is this id already closed?); the positions themselves are
decoded, all at once, when something first reads one (or lists them, or copies the book).
Until then closes folded after the snapshot are kept beside the undecoded ones.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, MutableMapping, ValuesView
from typing import Protocol

from projections.positions import Position


class ClosedDecoder(Protocol):
    def __call__(self, data: bytes) -> list[Position]: ...


class LazyClosed(MutableMapping[str, Position]):
    """A dict of closed positions by id, in the snapshot's order, whose values are decoded
    from `data` on first use. Iteration order and values are those of the dict it stands for:
    the snapshot's positions in order, then those added since (an id already there keeps its
    place and takes the new value).

    Safe to read from several threads without a lock (projections hold none): two threads
    that both find it undecoded may both decode, but the first result stored is the one
    every reader gets. Writes come only from the fold of a book not yet published (a
    published book's closed history is layered under a new dict by Book.successor)."""

    def __init__(
        self,
        data: bytes,
        ids: list[str] | dict[str, None],
        decode: ClosedDecoder,
        added: dict[str, Position] | None = None,
    ) -> None:
        self._data: bytes | None = data
        self._decode = decode
        # never changed (shared by merged copies): readers may look at it meanwhile
        self._ids = ids if isinstance(ids, dict) else dict.fromkeys(ids)
        self._added: dict[str, Position] = {} if added is None else added
        self._full: dict[str, Position] | None = None

    def merged(self, recent: Mapping[str, Position]) -> MutableMapping[str, Position]:
        """A new mapping: this one with recent written over it, this one unchanged. Decodes
        nothing (Book's layered history merges its recent closes this way; a decode on the
        writer's path would stall a commit)."""
        data = self._data
        if self._full is not None or data is None:
            return {**self._decoded(), **recent}
        return LazyClosed(data, self._ids, self._decode, {**self._added, **recent})

    def undecoded(self, over: Mapping[str, Position]) -> tuple[bytes, list[Position]] | None:
        """With `over` written over this mapping: the snapshot's bytes and the positions that
        follow its own, in order, while none of its own was replaced and none decoded (what
        writing the next snapshot needs without decoding); None otherwise."""
        data = self._data
        if self._full is not None or data is None:
            return None
        after = {**self._added, **over}
        ids = self._ids
        if any(key in ids for key in after):
            return None
        return data, list(after.values())

    @property
    def decoded(self) -> bool:
        """Whether the snapshot's positions have been decoded yet."""
        return self._full is not None

    def _decoded(self) -> dict[str, Position]:
        full = self._full
        if full is not None:
            return full
        data = self._data
        if data is not None:  # else another thread has just decoded: _full is set
            full = {p.position_id: p for p in self._decode(data)}
            full.update(self._added)
            if self._full is None:  # the first decode stored wins (see the class)
                self._full = full
                self._data = None  # the file's bytes are no longer needed
        result = self._full
        assert result is not None
        return result

    def __getitem__(self, key: str) -> Position:
        full = self._full
        if full is not None:
            return full[key]
        added = self._added.get(key)
        if added is not None:
            return added
        if key in self._ids:
            return self._decoded()[key]
        raise KeyError(key)  # so Mapping.get of an unknown id decodes nothing

    def __contains__(self, key: object) -> bool:
        full = self._full
        if full is not None:
            return key in full
        return key in self._added or key in self._ids

    def __len__(self) -> int:
        full = self._full
        if full is not None:
            return len(full)
        ids = self._ids
        return len(ids) + sum(1 for key in list(self._added) if key not in ids)

    def __iter__(self) -> Iterator[str]:
        full = self._full
        if full is not None:
            return iter(full)
        ids = self._ids
        return iter([*ids, *(key for key in list(self._added) if key not in ids)])

    def __setitem__(self, key: str, value: Position) -> None:
        full = self._full
        if full is not None:
            full[key] = value
        else:
            self._added[key] = value

    def __delitem__(self, key: str) -> None:
        del self._decoded()[key]

    def values(self) -> ValuesView[Position]:
        # a dict's view: reversible, as Book.recently_closed needs
        return self._decoded().values()

    def items(self) -> ItemsView[str, Position]:
        return self._decoded().items()
