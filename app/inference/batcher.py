"""Dynamic batching for one model replica.

Ideas from TEI (core/src/queue.rs, infer.rs) and Infinity (inference/batch_handler.py):
- admission control lives in one place, the pool (ModelPool._admit: at most `max_queue` texts
  admitted and unanswered per model, beyond that OVERLOADED at once); the batcher queues what it
  is given and only uses `max_queue` to bound the deque of cancelled leftovers;
- texts from concurrent callers are merged into forward passes bounded by `max_batch_size` and a
  padded-token budget `max_batch_tokens`; a batch keeps gathering while texts keep coming (each
  within `max_wait_ms` of the last text or of the end of the last pass), up to `max_gather_ms`:
  a lone request waits at most `max_wait_ms`, and under load the callers the last pass answered
  get to send their next texts before the next pass starts. Without that, closed-loop clients
  settle into two half-size groups that take turns (64 clients: passes of 32), and on a CPU a pass
  of 32 does 0.84x the texts per second of a pass of 64 (one two-thread pass at a time). A slot that
  frees while another pass runs does not gather: it starts on what is queued, since waiting would
  leave its share of the cores idle (two one-thread passes: 1.07x in A/B rounds, 64 clients);
- the next texts in fair order (a window of a few batches, in texts and tokens) are sorted by
  length and cut into the passes that cost least (cut_by_padding): a pass costs its padded tokens
  plus a fixed `pass_overhead_tokens`, so a window of mixed lengths is split where the padding it
  saves outweighs one more pass (one-text requests of 10-27 tokens at 64 clients: two passes do
  ~1.25x the texts per second of one). No text waits behind more than one window (no starvation
  of long texts). While one pass's callers send their next requests the other pass runs (with the
  torch backend's unpadded forward, padding costs little and that overlap is what the split buys:
  measured 0.79x against 0.72x the ceiling without splitting, cold one-text at 64 clients). The
  passes start in fair order, the one holding the window's first text first; starting the
  shortest first instead made no difference (1.01x, ahead in 5 of 8 A/B rounds in process, 64
  one-text clients on 2 cores: two passes start together anyway);
- one future per text: a caller that goes away cancels its futures and their work is skipped;
- texts queue per fair key (an API key or a client address, app/inference/callers.py) and are
  taken in start-time fair order over tokens, so a key's one text goes into the next pass however
  many texts another key has queued: the passes of a window start in that order (for one key:
  oldest text first), and passes cut but not started are cut again when a text arrives that
  should go before theirs;
- backend.encode runs in a dedicated executor with one thread per pass the backend runs at once
  (`backend.passes_at_once`: 1 on a GPU; on a CPU two single-threaded passes by default, see
  app/inference/cpu_share.py): the event loop never blocks, and while one pass's callers are
  answered and send their next texts the other pass keeps the cores busy; where the pool hands
  over token ids (TokenIdBackend, or a cross-encoder's pairs), a pass encodes those instead of
  tokenizing the texts again.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, KeysView, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger

from app.domain.embedding import EmbeddingBackend, TokenIdBackend, unit_rows
from app.errors import Internal, ModelUnavailable
from app.inference import metrics
from app.inference.callers import INTERNAL_FAIR_KEY
from app.inference.fair_queue import FairQueue, order
from app.tasks import cancel_and_wait

# How many batches' worth of the oldest texts are sorted together by length.
WINDOW_BATCHES = 4


@dataclass(eq=False)
class _Item:
    text: str
    tokens: int  # after truncation: what the text costs in a padded batch
    normalize: bool
    future: asyncio.Future[np.ndarray]
    enqueued_at: float
    ids: Any = None  # the token ids counted at admission (a pair's: ids and type ids), when the backend takes them
    bulk: bool = False  # stored work that waits for room (ingest, jobs, the reconciler), not a caller waiting
    key: str = INTERNAL_FAIR_KEY  # whose share of the model it uses; FairQueue sets key, tag and seq
    tag: float = 0.0
    seq: int = 0


def cut_by_padding(tokens: Sequence[int], max_size: int, max_tokens: int, overhead: int) -> list[int]:
    """Where to cut texts sorted by ascending token count into passes: the end index of each.

    Minimises the sum over passes of (texts x longest + overhead), each pass at most `max_size`
    texts and `max_tokens` padded tokens (a single text may exceed it); dynamic programming over
    the cut points, at most max_size candidates per text."""
    count = len(tokens)
    best = [0] * (count + 1)  # best[end]: the least cost of tokens[:end]
    start = [0] * (count + 1)  # where the last pass of that best split begins
    for end in range(1, count + 1):
        longest = tokens[end - 1]
        best[end], start[end] = best[end - 1] + longest + overhead, end - 1  # a pass of its own
        for begin in range(end - 2, max(0, end - max_size) - 1, -1):
            size = end - begin
            if size * longest > max_tokens:
                break
            cost = best[begin] + size * longest + overhead
            if cost < best[end]:
                best[end], start[end] = cost, begin
    ends: list[int] = []
    end = count
    while end > 0:
        ends.append(end)
        end = start[end]
    return ends[::-1]


class DynamicBatcher:
    def __init__(
        self,
        backend: EmbeddingBackend,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_gather_ms: float,
        max_queue: int,
        pass_overhead_tokens: int,
        model_name: str | None = None,
        bulk_pass_texts: int | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.pass_overhead_tokens = max(0, pass_overhead_tokens)
        # A pass of bulk texts only holds at most this many: with every slot busy on long bulk
        # passes an interactive text would wait for one of them to end.
        self.bulk_pass_texts = max(1, min(bulk_pass_texts or self.max_batch_size, self.max_batch_size))
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_gather = max(self.max_wait, max_gather_ms / 1000.0)
        self._last_arrival = 0.0
        self._last_pass_end = 0.0
        self.max_queue = max(1, max_queue)
        self.model_name = model_name or backend.model_name
        self.takes_ids = isinstance(backend, TokenIdBackend)  # the pool hands it texts' ids: checked once
        self._queue: FairQueue[_Item] = FairQueue()
        self.on_release: Callable[[], None] | None = None  # a queued text left the queue (answered, failed, dropped)
        self._ready: deque[list[_Item]] = deque()  # passes cut from the last window, not yet started
        self._ready_last = (0.0, 0)  # order() of the last text in the window those were cut from
        self._recut = False  # a text came in that goes before some of _ready's
        self._pending_by_key: dict[str, int] = {}
        self._running: dict[asyncio.Task[None], list[_Item]] = {}  # passes in flight and their texts
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        passes = max(1, backend.passes_at_once)
        self.passes_at_once = passes
        self._free_passes = asyncio.Semaphore(passes)
        self._executor = ThreadPoolExecutor(max_workers=passes, thread_name_prefix=f"encode-{backend.device}")
        self._closed = False
        self._queue_size = metrics.QUEUE_SIZE.labels(self.model_name)

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def pending(self) -> int:
        """Texts admitted and not yet answered (queued or in a running pass)."""
        return self._pending

    def pending_of(self, fair_key: str) -> int:
        """The texts of `pending` that are fair_key's."""
        return self._pending_by_key.get(fair_key, 0)

    def callers(self) -> KeysView[str]:
        """The fair keys with texts in `pending`."""
        return self._pending_by_key.keys()

    async def submit(
        self,
        texts: Sequence[str],
        token_counts: Sequence[int],
        normalize: bool,
        token_ids: Sequence[Any] | None = None,
        fair_key: str = INTERNAL_FAIR_KEY,
        bulk: bool = False,
    ) -> np.ndarray:
        """Embed texts (already validated) as part of whatever batches form; rows in input order.
        token_ids: the texts' ids (TokenIdBackend.token_ids, or a cross-encoder's pair_token_ids),
        so passes need not tokenize: given, they go to backend.encode_ids instead of the texts.
        fair_key: whose share of the model they use (callers.fair_key_of). bulk: stored work
        (ingest, jobs): its passes stay short while another pass runs (bulk_pass_texts)."""
        if self._closed:
            raise ModelUnavailable(f"model {self.model_name!r} was unloaded", model=self.model_name)
        if not texts:
            return np.empty((0, self.backend.dimensions), dtype=np.float32)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        cap = self.backend.max_seq_length
        ids: Sequence[Any] = token_ids if token_ids is not None else [None] * len(texts)
        items = [
            _Item(text, min(tokens, cap), normalize, loop.create_future(), now, item_ids, bulk=bulk)
            for text, tokens, item_ids in zip(texts, token_counts, ids, strict=True)
        ]
        self._last_arrival = now
        self._pending += len(items)
        self._pending_by_key[fair_key] = self._pending_by_key.get(fair_key, 0) + len(items)
        self._queue_size.inc(len(items))
        release = functools.partial(self._release, fair_key)
        for item in items:
            item.future.add_done_callback(release)
        self._queue.push(fair_key, items)
        if self._ready and order(items[0]) < self._ready_last:
            self._recut = True
        self._compact()
        self._wakeup.set()
        self._ensure_worker()
        try:
            rows = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            # Cancelled or failed: the rest of this request's texts are not worth computing.
            for item in items:
                if not item.future.cancel() and not item.future.cancelled():
                    item.future.exception()  # mark retrieved: one error per request is enough
            raise
        return np.stack(rows)

    async def close(self) -> None:
        """Stop the worker; texts still waiting fail with ModelUnavailable."""
        self._closed = True
        await cancel_and_wait(self._worker)
        self._fail_all(ModelUnavailable(f"model {self.model_name!r} was unloaded", model=self.model_name))
        await cancel_and_wait(*self._running)  # after failing their texts: a done pass leaves _running
        # Wait for a pass already running in the thread, so the backend can be closed after us.
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def _release(self, fair_key: str, _future: asyncio.Future[np.ndarray]) -> None:
        self._pending -= 1
        left = self._pending_by_key[fair_key] - 1
        if left:
            self._pending_by_key[fair_key] = left
        else:
            del self._pending_by_key[fair_key]
        self._queue_size.dec()
        if self.on_release is not None:
            self.on_release()

    def _compact(self) -> None:
        # Cancelled items stay queued until the worker reaches them; if callers keep giving up
        # while a long pass runs, drop them now so the queue stays bounded too.
        if len(self._queue) > 2 * self.max_queue:
            self._queue.compact()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher:{self.model_name}:{self.device}"
            )

    async def _run(self) -> None:
        try:
            while True:
                if not self._ready and not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._free_passes.acquire()  # released when the pass it starts ends
                if self._recut:
                    self._recut = False
                    self._queue.put_back(item for batch in self._ready for item in batch)
                    self._ready.clear()
                if not self._ready:
                    if not self._running:
                        # Gather only while no pass runs: with another pass in flight the cores are
                        # busy anyway, and waiting here would leave this pass's share idle.
                        await self._gather_more()
                    self._ready.extend(self._take_batches())
                live = [item for item in self._ready.popleft() if not item.future.done()] if self._ready else []
                if not live:
                    self._free_passes.release()
                    continue
                self._queue.started(min(item.tag for item in live))
                task = asyncio.get_running_loop().create_task(self._pass(live))
                self._running[task] = live
                task.add_done_callback(self._running.pop)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            logger.exception("batcher for {} on {} crashed", self.model_name, self.device)
            self._fail_all(Internal(f"batcher crashed: {exc.__class__.__name__}"))
            raise

    async def _gather_more(self) -> None:
        """Wait for more texts while they keep coming: until the batch is full, nothing arrived for
        max_wait (since the last text, or since the last pass ended, whichever is later), or
        max_gather passed since gathering began."""
        give_up = time.perf_counter() + self.max_gather
        while len(self._queue) < self.max_batch_size:
            deadline = min(give_up, max(self._last_arrival, self._last_pass_end) + self.max_wait)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batches(self) -> list[list[_Item]]:
        """The next window of texts in fair order, cut into passes by length; the passes start in
        fair order too (the one holding the window's first text first)."""
        window = self._queue.take(self.max_batch_size * WINDOW_BATCHES, self.max_batch_tokens * WINDOW_BATCHES)
        if not window:
            return []
        self._ready_last = order(window[-1])
        window.sort(key=lambda item: item.tokens)
        passes: list[list[_Item]] = []
        # Callers' texts and bulk texts go in passes of their own: a caller's text never waits in
        # a long pass of stored work, and bulk passes stay short (bulk_pass_texts).
        for bulk, most in ((False, self.max_batch_size), (True, self.bulk_pass_texts)):
            group = [item for item in window if item.bulk is bulk]
            ends = cut_by_padding([item.tokens for item in group], most, self.max_batch_tokens, self.pass_overhead_tokens)
            passes += [group[begin:end] for begin, end in zip([0, *ends], ends)]
        if len(passes) == 1 and not self._running and self.passes_at_once > 1 and 1 < len(passes[0]) < self.max_batch_size:
            # A lone request on an idle model (nothing running, the window short of a pass): its
            # texts go in one pass per slot, so every core works on it; one single-threaded pass
            # left the other core idle (a lone rerank of 16 pairs: 0.7x Infinity's requests/s).
            whole, parts = passes[0], min(self.passes_at_once, len(passes[0]))
            passes = [whole[k * len(whole) // parts : (k + 1) * len(whole) // parts] for k in range(parts)]
        passes.sort(key=lambda batch: min(map(order, batch)))
        return passes

    async def _pass(self, batch: list[_Item]) -> None:
        try:
            await self._forward(batch)
        finally:
            self._free_passes.release()

    async def _forward(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        queue_time = metrics.QUEUE_TIME.labels(self.model_name)
        for item in batch:
            queue_time.observe(started - item.enqueued_at)
        metrics.BATCH_SIZE.labels(self.model_name).observe(len(batch))
        metrics.BATCH_TOKENS.labels(self.model_name).observe(len(batch) * batch[-1].tokens)
        loop = asyncio.get_running_loop()
        try:
            # Normalised below per text: one pass can then serve callers asking either way.
            # Ids come only from the backend's own tokenizer (token_ids, pair_token_ids): it encodes them.
            if all(item.ids is not None for item in batch):
                ids = [item.ids for item in batch]
                vectors = await loop.run_in_executor(self._executor, self.backend.encode_ids, ids, False)  # type: ignore[attr-defined]
            else:
                texts = [item.text for item in batch]
                vectors = await loop.run_in_executor(self._executor, self.backend.encode, texts, False)
        except Exception as exc:  # noqa: BLE001  any backend failure is answered, not raised
            logger.exception("forward pass of {} texts failed on {} ({})", len(batch), self.device, self.model_name)
            error = Internal(f"inference failed on {self.device}: {exc.__class__.__name__}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._last_pass_end = time.perf_counter()
            metrics.FORWARD_PASSES.labels(self.model_name, self.device).inc()
            metrics.INFERENCE_SECONDS.labels(self.model_name, self.device).observe(time.perf_counter() - started)
        unit = unit_rows(vectors)
        for row, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(unit[row] if item.normalize else vectors[row])

    def _fail_all(self, error: Exception) -> None:
        items = [*(item for batch in self._running.values() for item in batch),
                 *(item for batch in self._ready for item in batch), *self._queue.drain()]  # fmt: skip
        self._ready = deque()
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)
