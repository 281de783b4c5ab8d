"""The committed stubs must be what the protos generate today."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridrec.server import protogen

# Lines that name the generator's own version change with grpcio-tools releases, not with our protos.
VERSION_LINE = re.compile(r"(GRPC_GENERATED_VERSION|Protobuf Python Version|^\s+\d+,\s*$|_runtime_version)")


def _normalised(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not VERSION_LINE.search(line)]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")
    generated = protogen.generate(tmp_path)
    assert generated, "protoc wrote nothing"
    for new in generated:
        committed = protogen.PROTO_ROOT / new.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `make protos`"
        assert _normalised(new) == _normalised(committed), f"{committed} is stale: run `make protos`"


def test_every_proto_has_stubs() -> None:
    for proto in protogen.proto_files():
        stem = proto.with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert Path(f"{stem}{suffix}").is_file()
