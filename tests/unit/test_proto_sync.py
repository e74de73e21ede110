"""The committed gRPC stubs in snakepit_tasks/_proto match proto/ (regenerate: make proto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snakepit_tasks import protogen
from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks._proto import bridge_pb2_grpc as pb_grpc

pytest.importorskip("grpc_tools")


def test_proto_source_is_present() -> None:
    assert (protogen.PROTO_DIR / protogen.PROTO_FILE).is_file()


def test_committed_stubs_match_the_proto() -> None:
    assert protogen.check() == [], "stale stubs: run `python -m snakepit_tasks.protogen`"


def test_generate_rewrites_the_grpc_import(tmp_path: Path) -> None:
    paths = protogen.generate(tmp_path)
    assert [p.name for p in paths] == list(protogen.GENERATED)
    text = (tmp_path / "bridge_pb2_grpc.py").read_text()
    assert "from . import bridge_pb2 as" in text
    assert "\nimport bridge_pb2" not in text


def test_stub_package_and_services() -> None:
    assert pb.DESCRIPTOR.package == "snakepit.bridge.v1"
    services = set(pb.DESCRIPTOR.services_by_name)
    assert services == {"AdapterRuntime", "HostTools"}
    runtime = pb.DESCRIPTOR.services_by_name["AdapterRuntime"]
    assert set(runtime.methods_by_name) == {
        "Ping",
        "Describe",
        "Execute",
        "Calls",
        "ExecuteStream",
        "Heartbeat",
        "InitializeSession",
        "CleanupSession",
    }
    assert hasattr(pb_grpc, "AdapterRuntimeStub")
    assert hasattr(pb_grpc, "HostToolsStub")
