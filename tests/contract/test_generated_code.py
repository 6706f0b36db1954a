"""The committed generated code must match what the protos generate today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "libs" / "flowyard" / "src" / "flowyard" / "v1"


def test_generated_protobuf_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "flowyard" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in COMMITTED.iterdir() if p.name != "__pycache__")
    _, mismatch, errors = filecmp.cmpfiles(fresh, COMMITTED, names, shallow=False)
    assert not mismatch and not errors, (
        f"stale generated code: {mismatch + errors}; run `make protos` and commit the result"
    )


def test_the_gateway_services_are_in_the_contract() -> None:
    from flowyard.v1 import gateway_pb2

    services = gateway_pb2.DESCRIPTOR.services_by_name
    assert set(services) >= {"WorkflowService", "RunService"}
    assert {m.name for m in services["RunService"].methods} >= {"StartRun", "GetRun", "WatchRun"}
