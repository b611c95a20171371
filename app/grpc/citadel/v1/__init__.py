"""Generated from citadel.proto by `python -m app.grpc.generate`; do not edit the *_pb2* modules."""
