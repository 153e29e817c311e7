"""The media prefixes a server keeps prefilled: a few `Engine.session`s, least recently used first
out, bounded in number and in the memory their KV caches hold."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class Kept:
    session: Any  # a qvl.engine.session.Session
    record: dict[str, Any]  # what an answer's record says about the media (frames, span, ...)

    @property
    def bytes(self) -> int:
        return self.session.cache_bytes


class SessionCache:
    """At most `max_sessions` sessions holding at most `max_bytes` together; 0 keeps none."""

    def __init__(self, max_sessions: int, max_bytes: int):
        self.max_sessions, self.max_bytes = max_sessions, max_bytes
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_sessions > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        return sum(kept.bytes for kept in self._kept.values())

    def get(self, key: str) -> Kept | None:
        kept = self._kept.get(key)
        if kept is None:
            self.misses += 1
            return None
        self._kept.move_to_end(key)
        self.hits += 1
        return kept

    def put(self, key: str, session, record: dict[str, Any]) -> Kept:
        """Keep `session` (unless it alone is over the memory bound), dropping the least recently
        used others until the bounds hold."""
        kept = Kept(session, record)
        if kept.bytes > self.max_bytes:
            return kept
        self._kept[key] = kept
        while len(self._kept) > self.max_sessions or self.bytes > self.max_bytes:
            self._kept.popitem(last=False)
            self.evictions += 1
        return kept

    def clear(self) -> None:
        self.evictions += len(self._kept)
        self._kept.clear()

    def to_dict(self) -> dict[str, int]:
        return {
            "kept": len(self),
            "bytes": self.bytes,
            "max_sessions": self.max_sessions,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
