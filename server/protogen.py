"""Regenerate the Python stubs (`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`) from protos/.

    python -m hybridrec.server.protogen            # writes next to the .proto files
    python -m hybridrec.server.protogen --out DIR  # writes elsewhere (the staleness test)

Needs a source checkout (the protos/ folder) and grpcio-tools (the `dev` extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.rglob("*.proto"))


def generate(out_dir: Path | None = None, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto below `root`; returns the files written."""
    from grpc_tools import protoc

    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    files = proto_files(root)
    if not files:
        raise SystemExit(f"no .proto files below {root}")
    args = ["protoc", f"-I{root}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            *[str(f) for f in files]]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return sorted(out.rglob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the gRPC stubs from protos/.")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: next to the protos)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
