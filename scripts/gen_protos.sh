#!/usr/bin/env bash
# Regenerates the committed gRPC stubs from runtime/protos/*.proto.
# The stubs are committed so installing the runtime on a node needs no protoc; the test suite
# (tests/test_protos_current.py) fails when they are out of date. Usage: bash scripts/gen_protos.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runtime/generated}"
mkdir -p "$out"
"${PYTHON:-python3}" -m grpc_tools.protoc -I runtime/protos --python_out="$out" --grpc_python_out="$out" runtime/protos/runtime.proto
# protoc emits absolute imports ("import runtime_pb2"); make them package-relative.
sed -i 's/^import runtime_pb2 as/from . import runtime_pb2 as/' "$out/runtime_pb2_grpc.py"
touch "$out/__init__.py"
