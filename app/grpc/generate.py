"""Regenerate the Python modules of citadel.proto (grpcio-tools: a test/dev dependency only).

    python -m app.grpc.generate            # into app/grpc/citadel/v1/, beside the proto
    python -m app.grpc.generate -o DIR     # elsewhere (tests/unit/test_grpc_generated.py compares)

The proto is compiled from the repository root, so the generated stub imports
`app.grpc.citadel.v1.citadel_pb2` as a package module rather than a top-level `citadel`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("app/grpc/citadel/v1/citadel.proto")
GENERATED = ("citadel_pb2.py", "citadel_pb2.pyi", "citadel_pb2_grpc.py")


def generate(out: Path = ROOT) -> list[Path]:
    """Writes the modules under `out`/app/grpc/citadel/v1/ and returns their paths."""
    import grpc_tools  # imported here: the server itself never needs grpcio-tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{includes}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out / PROTO.parent / name for name in GENERATED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT, help="root to write app/grpc/citadel/v1/ under")
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
