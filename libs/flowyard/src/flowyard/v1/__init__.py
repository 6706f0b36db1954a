"""Generated protobuf and gRPC code for flowyard.v1 (scripts/gen-protos.py)."""
