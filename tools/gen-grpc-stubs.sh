#!/bin/sh
# Regenerate speedproxy/admin/grpc/admin_pb2.py and admin_pb2_grpc.py from
# admin.proto (needs grpcio-tools: pip install grpcio-tools, part of the test
# extra on CPython).  Run from anywhere; PYTHON picks the interpreter.
# tests/unit/admin/grpc/test_grpc_stubs.py fails when the stubs are stale.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. speedproxy/admin/grpc/admin.proto
echo "regenerated speedproxy/admin/grpc/admin_pb2.py and admin_pb2_grpc.py"
