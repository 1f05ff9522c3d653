"""The gRPC contract's generated code, and the conversions of the gRPC face that no
server is needed to check."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import grpc
import orjson
from grpc_tools import protoc

from surge.rpc import convert

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    """src/surge/v1 is what `make proto` makes of proto/surge/v1/surge.proto today."""
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        str(ROOT / "proto/surge/v1/surge.proto"),
    ]
    assert protoc.main(args) == 0
    made = sorted((tmp_path / "surge/v1").iterdir())
    assert {m.name for m in made} == {"surge_pb2.py", "surge_pb2.pyi", "surge_pb2_grpc.py"}
    for generated in made:
        kept = ROOT / "src/surge/v1" / generated.name
        assert kept.read_text() == generated.read_text(), f"{kept} is stale: run `make proto`"


def _problem(status: int, kind: str, retry: str | None = None) -> tuple[int, bytes, bytes]:
    head = b"content-type: application/problem+json\r\n"
    if retry:
        head += b"retry-after: " + retry.encode() + b"\r\n"
    body = orjson.dumps({"type": f"/problems/{kind}", "title": kind, "detail": f"{kind}!"})
    return status, head, body


def test_problem_kinds_map_to_grpc_codes() -> None:
    cases = {
        (409, "sold-out"): grpc.StatusCode.FAILED_PRECONDITION,
        (409, "key-in-flight"): grpc.StatusCode.ABORTED,
        (404, "order-not-found"): grpc.StatusCode.NOT_FOUND,
        (401, "unauthorized"): grpc.StatusCode.UNAUTHENTICATED,
        (429, "rate-limited"): grpc.StatusCode.RESOURCE_EXHAUSTED,
        (503, "overloaded"): grpc.StatusCode.UNAVAILABLE,
        (504, "deadline-exceeded"): grpc.StatusCode.DEADLINE_EXCEEDED,
        (418, "teapot"): grpc.StatusCode.FAILED_PRECONDITION,  # an unknown 4xx
        (502, "bad-gateway"): grpc.StatusCode.INTERNAL,
    }
    for (status, kind), code in cases.items():
        refused = convert.refusal(_problem(status, kind, "3"))
        assert (refused.code, refused.detail) == (code, f"{kind}!"), (status, kind)
        trailers = dict(refused.trailers)
        assert trailers["surge-problem-type"] == f"/problems/{kind}"
        assert trailers["retry-after"] == "3"


def test_a_body_that_is_not_a_problem_is_internal() -> None:
    refused = convert.refusal((500, b"", b"<html>oops</html>"))
    assert (refused.code, refused.detail) == (grpc.StatusCode.INTERNAL, "internal error")
    assert "retry-after" not in dict(refused.trailers)
