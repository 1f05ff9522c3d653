"""From the HTTP handlers' answers to gRPC's: JSON bodies into messages, problems into
status codes that keep the problem type.

A refusal carries what its HTTP twin's problem body says, in the form gRPC clients know:
the status code (the nearest of gRPC's), the detail as its message, and a
google.rpc.Status in `grpc-status-details-bin` whose google.rpc.ErrorInfo holds the
problem's kind, type and HTTP status; `surge-problem-type` repeats the type for clients
without the rich-status helpers, and `retry-after` comes where HTTP sends Retry-After.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2

from surge.ground.web import Response
from surge.v1 import surge_pb2 as pb

# problem kinds whose HTTP status says less than gRPC can
_BY_KIND = {
    "sold-out": grpc.StatusCode.FAILED_PRECONDITION,
    "limit-reached": grpc.StatusCode.FAILED_PRECONDITION,
    "sale-not-live": grpc.StatusCode.FAILED_PRECONDITION,
    "key-reused": grpc.StatusCode.FAILED_PRECONDITION,
    "key-in-flight": grpc.StatusCode.ABORTED,
    "order-paid": grpc.StatusCode.FAILED_PRECONDITION,
    "order-cancelled": grpc.StatusCode.FAILED_PRECONDITION,
    "order-expired": grpc.StatusCode.FAILED_PRECONDITION,
    "order-closed": grpc.StatusCode.FAILED_PRECONDITION,
    "body-too-large": grpc.StatusCode.INVALID_ARGUMENT,
}
_BY_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Refusal(Exception):
    """A call's answer that is not a success: what `context.abort` needs."""

    def __init__(
        self, code: grpc.StatusCode, detail: str, trailers: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.trailers = trailers


def refusal(answer: Response) -> Refusal:
    """The gRPC status of an HTTP problem answer (any status >= 400)."""
    status, head, body = answer
    try:
        problem = orjson.loads(body)
        kind = str(problem["type"]).rsplit("/", 1)[-1]
        detail = str(problem["detail"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        kind, detail = "internal", "internal error"
    code = (
        _BY_KIND.get(kind)
        or _BY_STATUS.get(status)
        or (grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.FAILED_PRECONDITION)
    )
    return refusal_of(code, kind, detail, status, _header(head, b"retry-after"))


def refusal_of(
    code: grpc.StatusCode, kind: str, detail: str, status: int = 0, retry: str | None = None
) -> Refusal:
    """A refusal made by the gRPC face itself (`status`: the HTTP status it stands for)."""
    kind_type = f"/problems/{kind}"
    metadata = {"type": kind_type}
    if status:
        metadata["status"] = str(status)
    info = error_details_pb2.ErrorInfo(reason=kind, domain="surge", metadata=metadata)
    rich = status_pb2.Status(code=getattr(code_pb2, code.name), message=detail)
    rich.details.add().Pack(info)
    trailers: list[tuple[str, str | bytes]] = [
        ("grpc-status-details-bin", rich.SerializeToString()),
        ("surge-problem-type", kind_type),
    ]
    if retry is not None:
        trailers.append(("retry-after", retry))
    return Refusal(code, detail, tuple(trailers))


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n"):
        field, _, value = line.partition(b":")
        if field.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def json_of(answer: Response, expected: int) -> Any:
    """The JSON body of a success with status `expected`; a Refusal for anything else."""
    if answer[0] != expected:
        raise refusal(answer)
    return orjson.loads(answer[2])


def timestamp(text: str) -> Timestamp:
    moment = Timestamp()
    moment.FromJsonString(text)
    return moment


def order(data: dict[str, Any]) -> pb.Order:
    made = pb.Order(
        id=data["id"],
        sale_id=data["sale_id"],
        user_id=data["user_id"],
        quantity=data["quantity"],
        status=data["status"],
        created_at=timestamp(data["created_at"]),
    )
    if data.get("pay_by"):
        made.pay_by.CopyFrom(timestamp(data["pay_by"]))
    if data.get("closed_at"):
        made.closed_at.CopyFrom(timestamp(data["closed_at"]))
    if data.get("payment_ref"):
        made.payment_ref = data["payment_ref"]
    return made


def sale(data: dict[str, Any]) -> pb.Sale:
    return pb.Sale(
        id=data["id"],
        name=data["name"],
        stock=data["stock"],
        remaining=data["remaining"],
        state=data["state"],
        per_user_limit=data["per_user_limit"],
        starts_at=timestamp(data["starts_at"]),
        ends_at=timestamp(data["ends_at"]),
    )


def new_sale_body(request: pb.CreateSaleRequest) -> bytes:
    """POST /sales's body: what the request sets (an unset field is left for the HTTP
    validation to name)."""
    body: dict[str, Any] = {"name": request.name, "stock": request.stock}
    if request.per_user_limit:
        body["per_user_limit"] = request.per_user_limit
    for field in ("starts_at", "ends_at"):
        if request.HasField(field):
            body[field] = getattr(request, field).ToJsonString()
    return orjson.dumps(body)
