"""The model pool: replicas of each model on the configured devices, each with its own batcher.

Requests go to the least loaded replica. A model idle for settings.inference.idle_unload_seconds
is unloaded to free memory; its spec and directory are kept, and the next encode reloads it.
Admission is bounded per model (max_queue) and per fair key (max_queue_per_key, and a share that
shrinks as more keys wait, so that keys already waiting never fill the queue); the batchers share
passes between keys (app/inference/fair_queue.py).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger

from app.domain.embedding import EmbeddingBackend, Tokenized
from app.errors import BadInput, CitadelError, ModelUnavailable, Overloaded
from app.inference import metrics
from app.inference.backends import load_backend
from app.inference.batcher import DynamicBatcher
from app.inference.cpu_share import batch_tokens
from app.inference.callers import INTERNAL_FAIR_KEY
from app.domain.models import ModelSpec
from app.settings import Settings
from app.tasks import cancel_and_wait

# Below this many characters, counting tokens on the event loop is cheaper than a thread hop.
_INLINE_TOKENIZE_CHARS = 8_192


@dataclass
class _Replica:
    backend: EmbeddingBackend
    batcher: DynamicBatcher


@dataclass
class _Loaded:
    spec: ModelSpec
    replicas: list[_Replica]
    in_use: int = 0  # encode calls between admission and answer: never unload under them
    last_used: float = field(default_factory=time.monotonic)
    turn: itertools.count = field(default_factory=itertools.count)  # rotates ties between replicas
    room_waiters: list[asyncio.Future[None]] = field(default_factory=list)  # encode(wait_for_room=True) calls

    def wake(self) -> None:
        """A queued text was answered or dropped: callers waiting for room look again."""
        waiters, self.room_waiters = self.room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def room(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.room_waiters.append(waiter)
        await waiter


class ModelPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._known: dict[str, tuple[ModelSpec, Path]] = {}  # what load() was given: reloadable
        self._loaded: dict[str, _Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def load(self, spec: ModelSpec, model_dir: Path) -> str:
        """Load spec's model from model_dir on every configured device (idempotent); returns the
        devices it runs on, e.g. "cpu" or "cuda:0,cuda:1" (shown as the model's `device`)."""
        async with self._lock(spec.name):
            known = self._known.get(spec.name)
            if spec.name in self._loaded and known == (spec, Path(model_dir)):
                return ",".join(self.replicas(spec.name))
            if spec.name in self._loaded:  # a new directory or spec replaces the old replicas
                await self._drop(spec.name)
            self._known[spec.name] = (spec, Path(model_dir))
            try:
                await self._load_locked(spec.name)
            except BaseException:
                del self._known[spec.name]  # a model that never loaded is not reloaded on demand
                raise
        self._start_reaper()
        return ",".join(self.replicas(spec.name))

    def is_loaded(self, name: str) -> bool:
        """Replicas are in memory now (False after an idle unload)."""
        return name in self._loaded

    def knows(self, name: str) -> bool:
        """encode() will serve it: loaded, or idle-unloaded and reloaded on demand."""
        return name in self._known

    def replicas(self, name: str) -> list[str]:
        loaded = self._loaded.get(name)
        return [r.backend.device for r in loaded.replicas] if loaded else []

    async def unload(self, name: str) -> None:
        """Unload and forget: a later encode is ModelUnavailable until load() is called again."""
        async with self._lock(name):
            self._known.pop(name, None)
            await self._drop(name)

    async def close(self) -> None:
        reaper, self._reaper = self._reaper, None
        await cancel_and_wait(reaper)
        for name in list(self._loaded):
            await self.unload(name)
        self._known.clear()

    # -- inference -----------------------------------------------------------------------------

    async def encode(
        self,
        name: str,
        texts: Sequence[str],
        normalize: bool,
        tokens: Tokenized | None = None,
        fair_key: str = INTERNAL_FAIR_KEY,
        wait_for_room: bool = False,
    ) -> np.ndarray:
        """float32 (len(texts), dimensions). Over-long texts are truncated, or BadInput when
        settings.inference.truncate is False (extensions carry the offending index).
        tokens: what tokenize() said of these texts, so they are not tokenized twice.
        fair_key: whose share of the model this is (callers.fair_key_of).
        wait_for_room: where the queue (or the key's share of it) is full, wait until it has room
        instead of OVERLOADED: for bulk work whose texts are already stored (ingest, the
        reconciler), so concurrent writers slow down to the model's pace instead of failing; an
        interactive request keeps the immediate answer. Nothing is held while waiting, and a
        client that hangs up cancels the wait."""
        loaded = await self._acquire(name)
        try:
            replica = loaded.replicas[0]
            backend = replica.backend
            if not wait_for_room:  # refused before the tokenizer's work too (checked again below)
                self._admit(loaded, len(texts), fair_key)
            tokens = tokens if tokens is not None else await self._tokenize(replica, texts)
            counts = tokens.counts
            if not self.settings.inference.truncate:
                for index, count in enumerate(counts):
                    if count > backend.max_seq_length:
                        raise BadInput(
                            f"text {index} has {count} tokens; model {name!r} accepts at most "
                            f"{backend.max_seq_length} (truncation is off)",
                            index=index,
                            tokens=count,
                            max_tokens=backend.max_seq_length,
                        )
            while True:
                try:
                    self._admit(loaded, len(texts), fair_key)
                    break
                except Overloaded:
                    if not wait_for_room or len(texts) > self.settings.inference.max_queue:
                        raise  # an interactive caller, or more than the whole queue ever holds
                    await loaded.room()
            replica = self._least_loaded(loaded)
            return await replica.batcher.submit(texts, counts, normalize, tokens.ids, fair_key, bulk=wait_for_room)
        finally:
            loaded.in_use -= 1
            loaded.last_used = time.monotonic()

    async def score(
        self,
        name: str,
        pairs: Sequence[tuple[str, str]],
        fair_key: str = INTERNAL_FAIR_KEY,
        raw: bool = False,
    ) -> np.ndarray:
        """A cross-encoder's scores of (query, document) pairs, float32 (len(pairs), labels): what
        CrossEncoder.predict gives (the model's activation), or its logits where `raw`. Pairs go
        through the same admission, fair queue, batcher and token budget as texts (a pair costs
        its tokens after truncation). Each pair is tokenized once: its ids go to the pass."""
        loaded = await self._acquire(name)
        try:
            backend = loaded.replicas[0].backend
            pair_token_ids = getattr(backend, "pair_token_ids", None)
            if pair_token_ids is None:
                raise BadInput(f"model {name!r} is an embedding model, not a reranker", model=name)
            inline = sum(len(q) + len(d) for q, d in pairs) <= _INLINE_TOKENIZE_CHARS
            ids = pair_token_ids(pairs) if inline else await asyncio.to_thread(pair_token_ids, pairs)
            counts = [len(token_ids) for token_ids, _ in ids]
            self._admit(loaded, len(pairs), fair_key)
            replica = self._least_loaded(loaded)
            logits = await replica.batcher.submit(list(pairs), counts, False, ids, fair_key)  # type: ignore[arg-type]
        finally:
            loaded.in_use -= 1
            loaded.last_used = time.monotonic()
        return logits if raw else backend.activate(logits)  # type: ignore[attr-defined]

    async def token_spans(self, name: str, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int, int, Tokenized]:
        """(token offsets per text, special tokens per text, max_seq_length, the texts as tokenize()
        gives them) in the model's tokenizer, from one pass of it where the backend can."""
        loaded = await self._acquire(name)
        try:
            replica = loaded.replicas[0]
            backend = replica.backend
            both = getattr(backend, "token_spans_and_ids", None)
            if replica.batcher.takes_ids and both is not None:
                spans, specials, ids = await asyncio.to_thread(both, texts)
                tokens = Tokenized([len(row) for row in ids], ids)
            else:
                spans, specials = await asyncio.to_thread(backend.token_spans, texts)
                tokens = Tokenized([len(row) + specials for row in spans])
            return spans, specials, backend.max_seq_length, tokens
        finally:
            loaded.in_use -= 1
            loaded.last_used = time.monotonic()

    async def tokenize(self, name: str, texts: Sequence[str]) -> Tokenized:
        """Tokens of each text as the model sees it, special tokens included, before truncation:
        the counts, and the ids where the backend encodes from them (hand them to encode())."""
        loaded = await self._acquire(name)
        try:
            return await self._tokenize(loaded.replicas[0], texts)
        finally:
            loaded.in_use -= 1
            loaded.last_used = time.monotonic()

    # -- internals -----------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _acquire(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        if loaded is None:
            if name not in self._known:
                raise ModelUnavailable(f"model {name!r} is not loaded", model=name)
            async with self._lock(name):  # one reload however many callers arrive at once
                if name not in self._loaded:
                    if name not in self._known:
                        raise ModelUnavailable(f"model {name!r} was unloaded", model=name)
                    logger.info("reloading {} on demand", name)
                    await self._load_locked(name)
                loaded = self._loaded[name]
        loaded.in_use += 1
        loaded.last_used = time.monotonic()
        return loaded

    async def _load_locked(self, name: str) -> None:
        spec, model_dir = self._known[name]
        inference = self.settings.inference
        devices = resolve_devices(inference.devices, spec.backend)
        replicas: list[_Replica] = []
        try:
            for device in devices:
                try:
                    backend = await asyncio.to_thread(load_backend, spec, model_dir, device, inference)
                except CitadelError:
                    raise
                except Exception as exc:  # unreadable files, out of memory, driver errors
                    logger.exception("loading {} on {} failed", name, device)
                    raise ModelUnavailable(
                        f"model {name!r} could not be loaded on {device}: {exc.__class__.__name__}: {exc}", model=name
                    ) from exc
                batcher = DynamicBatcher(
                    backend,
                    max_batch_size=inference.max_batch_size,
                    max_batch_tokens=batch_tokens(inference, device),
                    pass_overhead_tokens=inference.pass_overhead_tokens,
                    max_wait_ms=inference.max_wait_ms,
                    max_gather_ms=inference.max_gather_ms,
                    max_queue=inference.max_queue,  # admission is _admit's; the batcher only bounds leftovers
                    model_name=name,
                    bulk_pass_texts=inference.bulk_pass_texts,
                )
                replicas.append(_Replica(backend, batcher))
        except BaseException:
            for replica in replicas:
                await replica.batcher.close()
                replica.backend.close()
            raise
        loaded = _Loaded(spec=spec, replicas=replicas)
        for replica in replicas:
            replica.batcher.on_release = loaded.wake
        self._loaded[name] = loaded
        logger.info("model {} ready on {}", name, ", ".join(devices))

    async def _drop(self, name: str) -> None:
        loaded = self._loaded.pop(name, None)
        if loaded is None:
            return
        for replica in loaded.replicas:
            await replica.batcher.close()
            await asyncio.to_thread(replica.backend.close)
        del loaded
        gc.collect()  # model weights are large; give the memory back now, not at some later GC
        logger.info("model {} unloaded", name)

    async def _tokenize(self, replica: _Replica, texts: Sequence[str]) -> Tokenized:
        inline = sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS
        backend = replica.backend
        if replica.batcher.takes_ids:  # checked once, not isinstance(backend, TokenIdBackend) per request
            ids = backend.token_ids(texts) if inline else await asyncio.to_thread(backend.token_ids, texts)
            return Tokenized([len(i) for i in ids], ids)
        counts = backend.token_counts(texts) if inline else await asyncio.to_thread(backend.token_counts, texts)
        return Tokenized(counts)

    def _admit(self, loaded: _Loaded, count: int, fair_key: str) -> None:
        """The queue bounds are per model, over all its replicas: beyond either, OVERLOADED at once.
        A key with nothing waiting is let in with a request of any size that fits max_queue. A key
        with texts waiting may hold its share: max_queue_per_key, and at most max_queue / (keys
        waiting + 1), so that however many heavy keys flood the model, together they leave room
        for one more caller's share and a light key's text is admitted (then served within a pass
        or two by the fair queue)."""
        inference = self.settings.inference
        name = loaded.spec.name
        waiting = sum(replica.batcher.pending for replica in loaded.replicas)
        if waiting + count > inference.max_queue:
            metrics.OVERLOADED.labels(name).inc()
            raise Overloaded(
                f"model {name!r} is overloaded: {waiting} texts queued, room for {inference.max_queue}; retry shortly",
                model=name,
            )
        mine = sum(replica.batcher.pending_of(fair_key) for replica in loaded.replicas)
        if not mine:
            return
        keys_waiting = len(set().union(*(replica.batcher.callers() for replica in loaded.replicas)))
        share = min(inference.max_queue_per_key, inference.max_queue // (keys_waiting + 1))
        if mine + count > share:
            metrics.OVERLOADED.labels(name).inc()
            raise Overloaded(
                f"model {name!r} is overloaded for this caller: {mine} of its texts queued, room for {share} per "
                f"caller while {keys_waiting} callers wait; retry shortly",
                model=name,
            )

    @staticmethod
    def _least_loaded(loaded: _Loaded) -> _Replica:
        replicas = loaded.replicas
        if len(replicas) == 1:
            return replicas[0]
        start = next(loaded.turn) % len(replicas)
        rotated = replicas[start:] + replicas[:start]
        return min(rotated, key=lambda r: r.batcher.pending)

    def _start_reaper(self) -> None:
        idle = self.settings.inference.idle_unload_seconds
        if idle > 0 and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(self._reap(idle), name="model-pool-reaper")

    async def _reap(self, idle: float) -> None:
        interval = min(max(idle / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, loaded in list(self._loaded.items()):
                if loaded.in_use == 0 and now - loaded.last_used >= idle:
                    try:
                        async with self._lock(name):
                            current = self._loaded.get(name)
                            if current is loaded and loaded.in_use == 0:
                                logger.info("unloading {}: idle for {:.0f}s", name, now - loaded.last_used)
                                await self._drop(name)
                    except Exception:  # noqa: BLE001  the reaper must outlive one bad unload
                        logger.exception("idle unload of {} failed", name)


def resolve_devices(setting: str, backend: str) -> list[str]:
    """'auto' = every visible CUDA device, else the CPU; or an explicit list 'cuda:0,cuda:1'."""
    value = setting.strip().lower()
    if value == "auto":
        devices = [f"cuda:{i}" for i in range(_cuda_device_count())] or ["cpu"]
    else:
        devices = []
        for raw in value.split(","):
            device = raw.strip()
            if device == "cuda":
                device = "cuda:0"
            if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
                raise ModelUnavailable(f"invalid inference device {raw.strip()!r} (use cpu, cuda or cuda:N)")
            if device not in devices:
                devices.append(device)
        if not devices:
            raise ModelUnavailable("no inference devices configured")
    if backend == "fastembed" and any(d.startswith("cuda") for d in devices) and not _onnx_cuda():
        # ONNX Runtime here has no CUDA provider: one CPU replica serves the model.
        return ["cpu"]
    return devices


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001  no torch or a broken driver: the CPU still works
        return 0


def _onnx_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()
