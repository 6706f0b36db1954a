"""Generate the Python code for proto/flowyard/v1 (messages, gRPC stubs, typed .pyi).

Usage: python scripts/gen-protos.py [OUT_DIR]

OUT_DIR defaults to libs/flowyard/src; the drift test generates into a temporary
directory and compares, so the committed code can never silently go stale.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("flowyard") / "v1"
INIT_TEXT = '"""Generated protobuf and gRPC code for flowyard.v1 (scripts/gen-protos.py)."""\n'


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.glob("flowyard/v1/*.proto"))
    (out_dir / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    return sorted((out_dir / PACKAGE_DIR).iterdir())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "libs" / "flowyard" / "src"
    for path in generate(target):
        print(path.relative_to(target))
