"""The gRPC transport (citadel.v1.Citadel), served beside HTTP in the same process: see docs/grpc.md."""
