"""The texts a replica has queued, per caller, served so that callers share the model fairly.

A caller is a fair key: an API key, or the client's address where no key is used
(app/inference/callers.py). Start-time fair queuing over tokens (Goyal, Vin and Cheng, SIGCOMM
1996): a text gets a start tag S = max(V, F), where F is the finish tag of its key's previous
text, and F becomes S + its tokens;
texts are taken in tag order (ties in arrival order). V, the virtual time, is the least tag of the
last pass started (DynamicBatcher starts the passes of a window in tag order). So:
- a key that had nothing queued starts at V, before every text another key has waiting: one text
  of a light key goes into the next pass whatever a heavy key has queued;
- keys with texts waiting take turns by tokens, not by texts or requests;
- a key that was idle gets no credit for it (S is never below V);
- one key alone is first-in first-out, as without fairness.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar


class Queued(Protocol):
    """What FairQueue needs of a text; it sets `tag` and `seq`."""

    tokens: int
    key: str
    tag: float
    seq: int

    @property
    def future(self) -> asyncio.Future[Any]: ...


T = TypeVar("T", bound=Queued)


def order(item: Queued) -> tuple[float, int]:
    """The order texts are served in: tag, then arrival."""
    return item.tag, item.seq


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}  # keys with texts queued, each in tag order
        self._finish: dict[str, float] = {}  # finish tag of each key's last text (stale ones pruned)
        self._virtual = 0.0
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        """Texts queued, cancelled ones not yet dropped included."""
        return self._size

    def __iter__(self) -> Iterator[T]:
        return itertools.chain.from_iterable(self._queues.values())

    @property
    def keys(self) -> int:
        return len(self._queues)

    def push(self, key: str, items: Iterable[T]) -> float:
        """Queue a request's texts in order; returns the least tag they got."""
        start = max(self._virtual, self._finish.get(key, self._virtual))
        first = start
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        for item in items:
            item.key, item.tag, item.seq = key, start, next(self._seq)
            start += max(1, item.tokens)
            queue.append(item)
            self._size += 1
        self._finish[key] = start
        if len(self._finish) > 2 * len(self._queues) + 64:
            self._finish = {k: f for k, f in self._finish.items() if f > self._virtual or k in self._queues}
        return first

    def take(self, max_texts: int, max_tokens: int) -> list[T]:
        """The live texts with the least tags, in tag order: at most max_texts and, after the first,
        at most max_tokens in all. Cancelled texts on the way are dropped."""
        taken: list[T] = []
        tokens = 0
        heap = [(order(queue[0]), key) for key, queue in self._queues.items()]
        heapq.heapify(heap)
        while heap and len(taken) < max_texts:
            _, key = heap[0]
            queue = self._queues[key]
            item = queue[0]
            if item.future.done():  # skip work nobody waits for
                self._pop(key, queue)
            elif taken and tokens + item.tokens > max_tokens:
                break
            else:
                self._pop(key, queue)
                taken.append(item)
                tokens += item.tokens
            if queue:
                heapq.heapreplace(heap, (order(queue[0]), key))
            else:
                heapq.heappop(heap)
        return taken

    def put_back(self, items: Iterable[T]) -> None:
        """Texts taken and not started go back where their tags place them."""
        by_key: dict[str, list[T]] = {}
        for item in items:
            if not item.future.done():
                by_key.setdefault(item.key, []).append(item)
        for key, returned in by_key.items():
            returned.sort(key=order)
            queue = self._queues.get(key)
            if queue is None:
                self._queues[key] = deque(returned)
            elif order(returned[-1]) < order(queue[0]):
                queue.extendleft(reversed(returned))
            else:  # the key's newer texts have lesser tags: merge (rare)
                self._queues[key] = deque(sorted([*returned, *queue], key=order))
            self._size += len(returned)

    def started(self, tag: float) -> None:
        """A pass whose least tag is `tag` started: virtual time moves on to it."""
        self._virtual = max(self._virtual, tag)

    def drain(self) -> list[T]:
        """Every text queued, and the queue emptied."""
        items = list(self)
        self._queues.clear()
        self._size = 0
        return items

    def compact(self) -> None:
        """Drop cancelled texts now (they are otherwise dropped when take reaches them)."""
        for key in list(self._queues):
            live = deque(item for item in self._queues[key] if not item.future.done())
            self._size -= len(self._queues[key]) - len(live)
            if live:
                self._queues[key] = live
            else:
                del self._queues[key]

    def _pop(self, key: str, queue: deque[T]) -> None:
        queue.popleft()
        self._size -= 1
        if not queue:
            del self._queues[key]
