"""The committed gRPC modules are what citadel.proto generates today (they never drift), and the
proto's enums cover the domain's values."""

from __future__ import annotations

from pathlib import Path

from app.domain.models import ModelState
from app.domain.vectors import SearchMode
from app.grpc.generate import GENERATED, PROTO, ROOT, generate


def test_committed_modules_match_the_proto(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert [p.name for p in fresh] == list(GENERATED)
    for path in fresh:
        committed = ROOT / PROTO.parent / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `python -m app.grpc.generate`"


def test_proto_enums_cover_the_domain() -> None:
    from app.grpc.citadel.v1 import citadel_pb2 as pb

    assert {f"MODEL_STATE_{s.value}" for s in ModelState} <= set(pb.ModelState.keys())
    assert {f"SEARCH_MODE_{m.value}" for m in SearchMode} <= set(pb.SearchMode.keys())


def test_the_service_is_citadel_v1() -> None:
    from app.grpc.citadel.v1 import citadel_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Citadel"]
    assert service.full_name == "citadel.v1.Citadel"
    assert {m.name for m in service.methods} == {"Embed", "Search", "SearchCollections", "Ingest", "Rerank", "WatchModelProgress"}


def test_every_rpc_is_served_by_citadel_service() -> None:
    # The generated CitadelServicer's methods answer UNIMPLEMENTED (raise NotImplementedError):
    # the servicer registered in app/grpc/server.py overrides every one of them.
    from app.grpc.citadel.v1 import citadel_pb2 as pb
    from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc
    from app.grpc.service import CitadelService

    for method in pb.DESCRIPTOR.services_by_name["Citadel"].methods:
        assert getattr(CitadelService, method.name) is not getattr(pb_grpc.CitadelServicer, method.name), method.name
