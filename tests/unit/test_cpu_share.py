"""How a CPU replica divides the cores: passes at once and threads per pass."""

from __future__ import annotations

from app.inference import cpu_share
from app.settings import InferenceSettings


def test_cpu_share_divides_the_cores_among_the_passes(monkeypatch):
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: 16)
    assert cpu_share.passes_at_once(InferenceSettings()) == 2
    assert cpu_share.threads_per_pass(InferenceSettings()) == 8
    assert cpu_share.threads_per_pass(InferenceSettings(passes_at_once=4)) == 4
    assert cpu_share.threads_per_pass(InferenceSettings(passes_at_once=1, threads=3)) == 3
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: 1)
    assert (cpu_share.passes_at_once(InferenceSettings()), cpu_share.threads_per_pass(InferenceSettings())) == (1, 1)
