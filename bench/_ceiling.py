"""The in-process ceiling: sentence-transformers `encode` on the files the server uses, as the
baseline every throughput table compares with.

InProcessEncoder encodes in the calling process. CeilingWorker runs one in a subprocess of its own
under a chosen OpenMP wait policy (the environment is read once, when torch loads libgomp), and
HonestCeiling keeps one worker with OpenMP's default policy and one with PASSIVE, measures both
(alternating which goes first) and takes the higher rate as the ceiling: the best a process on
this machine does, not the rate under whichever policy the bench process happens to run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # a worker: python bench/_ceiling.py --embed-worker MODEL | --rerank-worker DIR
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import MODEL


@dataclass
class EncodeRate:
    texts: int
    seconds: float
    cpu_seconds: float = math.nan  # this process, every thread

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_ms_per_text(self) -> float:
        return 1000.0 * self.cpu_seconds / self.texts if self.texts else math.nan


def mean_rate(rates: Sequence[EncodeRate]) -> float:
    """Sentences/s over several measurements taken together (total texts / total time)."""
    seconds = sum(r.seconds for r in rates)
    return sum(r.texts for r in rates) / seconds if seconds > 0 else math.nan


class InProcessEncoder:
    """sentence-transformers `encode` in this process, on the model files the server uses."""

    def __init__(self, model: str = MODEL) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from app.inference.sources import local_model_dir
        from app.settings import Settings

        spec = Settings(_env_file=None).model(model)  # type: ignore[call-arg]
        self._torch = torch
        self.model = SentenceTransformer(str(local_model_dir(spec)), device="cpu", local_files_only=True)
        self.model.max_seq_length = spec.max_seq_length
        self.model.eval()

    def rate(self, texts: Sequence[str], batch_size: int = 64) -> EncodeRate:
        """Sentences/s of encoding `texts` in batches of `batch_size` (after one warm-up batch)."""
        with self._torch.inference_mode():
            self.model.encode(
                list(texts[:batch_size]),
                batch_size=batch_size,
                normalize_embeddings=True,
            )
            started, cpu = time.perf_counter(), time.process_time()
            self.model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return EncodeRate(len(texts), time.perf_counter() - started, time.process_time() - cpu)


# -- the ceiling in subprocesses, under each OpenMP wait policy ---------------------------------

POLICIES: dict[str, str | None] = {"default": None, "PASSIVE": "PASSIVE"}  # label -> OMP_WAIT_POLICY


class CeilingWorker:
    """InProcessEncoder in a subprocess, OMP_WAIT_POLICY=`policy` (None: unset, OpenMP's default);
    kind "rerank": a sentence-transformers CrossEncoder of the directory `model`, whose rate() takes
    (query, document) pairs and runs CrossEncoder.predict. Idle between measurements (blocked
    reading its stdin)."""

    def __init__(self, policy: str | None, model: str = MODEL, kind: str = "embed") -> None:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy is not None:
            env["OMP_WAIT_POLICY"] = policy
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        self.policy = policy
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), f"--{kind}-worker", model],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )  # fmt: skip
        self.pid = self.process.pid
        hello = json.loads(self._line())
        self.policy_seen = hello.get("omp_wait_policy")  # what torch saw when it loaded
        self.threads = hello.get("threads")

    def _line(self) -> str:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the ceiling worker ({self.policy}) exited: {self.process.wait()}")
            if line.startswith("{"):  # anything else a library printed is not the reply
                return line

    def rate(self, texts: Sequence[str], batch_size: int = 64) -> EncodeRate:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"texts": list(texts), "batch_size": batch_size}) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self._line())
        return EncodeRate(reply["texts"], reply["seconds"], reply["cpu_seconds"])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class CeilingSample:
    label: str
    rates: dict[str, EncodeRate]  # policy label -> rate


@dataclass
class HonestCeiling:
    """Both policies' workers; measure() before and after each scenario (servers idle)."""

    texts: Sequence  # texts; (query, document) pairs for kind "rerank"
    model: str = MODEL
    kind: str = "embed"
    workers: dict[str, CeilingWorker] = field(default_factory=dict)
    samples: list[CeilingSample] = field(default_factory=list)

    def start(self) -> HonestCeiling:
        for label, policy in POLICIES.items():
            self.workers[label] = CeilingWorker(policy, self.model, self.kind)
        return self

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()

    def measure(self, label: str, quiet: bool = False) -> CeilingSample:
        order = list(self.workers.items())
        if len(self.samples) % 2:
            order.reverse()
        sample = CeilingSample(label, {name: worker.rate(self.texts) for name, worker in order})
        self.samples.append(sample)
        if not quiet:
            print("  ceiling " + ", ".join(f"{name} {rate.per_second:.1f}" for name, rate in sample.rates.items())
                  + f" {'pairs' if self.kind == 'rerank' else 'sentences'}/s ({label})", flush=True)  # fmt: skip
        return sample

    def by_policy(self, samples: Sequence[CeilingSample]) -> dict[str, float]:
        return {name: mean_rate([s.rates[name] for s in samples]) for name in self.workers}

    def best(self, samples: Sequence[CeilingSample]) -> tuple[float, str]:
        """The higher policy's mean rate over `samples`, and which policy it is."""
        rates = self.by_policy(samples)
        name = max(rates, key=lambda n: rates[n])
        return rates[name], name


def _worker(kind: str, model: str) -> None:
    policy = os.environ.get("OMP_WAIT_POLICY")
    import torch  # first: libgomp reads OMP_WAIT_POLICY when it loads

    if kind == "rerank":
        from sentence_transformers import CrossEncoder

        cross_encoder = CrossEncoder(model, device="cpu", local_files_only=True)

        def rate(pairs: list, batch_size: int) -> EncodeRate:
            pairs = [tuple(p) for p in pairs]
            with torch.inference_mode():
                cross_encoder.predict(pairs[:batch_size], batch_size=batch_size, show_progress_bar=False)
                started, cpu = time.perf_counter(), time.process_time()
                cross_encoder.predict(pairs, batch_size=batch_size, show_progress_bar=False)
            return EncodeRate(len(pairs), time.perf_counter() - started, time.process_time() - cpu)
    else:
        rate = InProcessEncoder(model).rate  # type: ignore[assignment]
    print(json.dumps({"omp_wait_policy": policy, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        result = rate(request["texts"], request.get("batch_size", 64))
        print(json.dumps({"texts": result.texts, "seconds": result.seconds, "cpu_seconds": result.cpu_seconds}),
              flush=True)  # fmt: skip


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] in ("--embed-worker", "--rerank-worker"):
    _worker(sys.argv[1][2:-7], sys.argv[2])
