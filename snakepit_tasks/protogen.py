"""Generates the Python gRPC stubs in ``snakepit_tasks/_proto`` from ``proto/``.

Run ``python -m snakepit_tasks.protogen`` (or ``make proto``) after editing the .proto file;
``tests/unit/test_proto_sync.py`` fails when the committed stubs are out of date.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "snakepit" / "bridge" / "v1"
PROTO_FILE = "bridge.proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
GENERATED = ("bridge_pb2.py", "bridge_pb2.pyi", "bridge_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the generated stubs into ``out_dir`` and return their paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + str(PROTO_DIR / PROTO_FILE))
    grpc_file = out_dir / "bridge_pb2_grpc.py"
    text = grpc_file.read_text()
    # grpcio-tools writes an absolute import; the stubs live inside our package.
    text = re.sub(r"^import bridge_pb2 as", "from . import bridge_pb2 as", text, flags=re.M)
    grpc_file.write_text(text)
    return [out_dir / name for name in GENERATED]


def check() -> list[str]:
    """Names of committed stub files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            p.name
            for p in fresh
            if not (OUT_DIR / p.name).exists() or (OUT_DIR / p.name).read_bytes() != p.read_bytes()
        ]


if __name__ == "__main__":
    if "--check" in sys.argv:
        stale = check()
        if stale:
            sys.exit("stale generated stubs: " + ", ".join(stale) + " (run make proto)")
        print("stubs up to date")
    else:
        for path in generate(OUT_DIR):
            print("wrote", path.relative_to(ROOT))
