"""Per-collection layout: settings give the defaults, createCollection overrides them, and the
Qdrant server adapter passes every part to Qdrant."""

from __future__ import annotations

import pytest
from qdrant_client import models

from app.adapters.qdrant_server import QdrantServerStore
from app.domain.vectors import CollectionLayout
from app.errors import BadInput
from app.services.collections import CollectionService
from app.settings import Settings, VectorSettings


class RecordingClient:
    """Only what create_collection calls, recording the arguments Qdrant would get."""

    def __init__(self) -> None:
        self.created: dict = {}

    async def collection_exists(self, name: str) -> bool:
        return False

    async def create_collection(self, name: str, **kwargs) -> bool:
        self.created = {"name": name, **kwargs}
        return True

    async def create_payload_index(self, *args, **kwargs) -> None:
        pass


async def test_server_adapter_passes_the_whole_layout_to_qdrant():
    client = RecordingClient()
    store = QdrantServerStore(client=client)  # type: ignore[arg-type]
    layout = CollectionLayout(
        shard_number=6, replication_factor=2, write_consistency_factor=2, on_disk_vectors=True, quantization="int8"
    )
    await store.create_collection("c", 384, "cosine", layout=layout)
    created = client.created
    assert (created["shard_number"], created["replication_factor"], created["write_consistency_factor"]) == (6, 2, 2)
    assert created["vectors_config"].on_disk is True and created["on_disk_payload"] is True
    assert created["quantization_config"].scalar.type == models.ScalarType.INT8
    assert store._quantized["c"] is True


async def test_default_layout_is_qdrants_single_shard_without_quantization():
    client = RecordingClient()
    await QdrantServerStore(client=client).create_collection("d", 4, "dot")  # type: ignore[arg-type]
    assert (client.created["shard_number"], client.created["replication_factor"]) == (1, 1)
    assert client.created["quantization_config"] is None


def test_settings_give_defaults_and_overrides_win():
    settings = Settings(_env_file=None, vectors=VectorSettings(shard_number=3, quantization="int8"))  # type: ignore[call-arg]
    service = CollectionService(settings, repo=None, store=None, models=None)
    layout = service._layout({"replication_factor": 2, "shard_number": None})
    assert layout == CollectionLayout(shard_number=3, replication_factor=2, quantization="int8")
    assert service._layout(None).shard_number == 3
    with pytest.raises(BadInput):
        service._layout({"write_consistency_factor": 5})
