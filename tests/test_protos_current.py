"""The committed gRPC stubs must match runtime/protos: regenerate them and compare."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto_files(tmp_path):
    subprocess.run(["bash", str(REPO / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True,
                   cwd=REPO, capture_output=True,
                   env=dict(os.environ, PYTHON=sys.executable))
    for name in ("runtime_pb2.py", "runtime_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / name, REPO / "runtime" / "generated" / name, shallow=False), (
            f"runtime/generated/{name} is stale: run `bash scripts/gen_protos.sh` and commit")
