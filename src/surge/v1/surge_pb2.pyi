import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Order(_message.Message):
    __slots__ = ("id", "sale_id", "user_id", "quantity", "status", "created_at", "pay_by", "closed_at", "payment_ref")
    ID_FIELD_NUMBER: _ClassVar[int]
    SALE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAY_BY_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REF_FIELD_NUMBER: _ClassVar[int]
    id: int
    sale_id: int
    user_id: str
    quantity: int
    status: str
    created_at: _timestamp_pb2.Timestamp
    pay_by: _timestamp_pb2.Timestamp
    closed_at: _timestamp_pb2.Timestamp
    payment_ref: str
    def __init__(self, id: _Optional[int] = ..., sale_id: _Optional[int] = ..., user_id: _Optional[str] = ..., quantity: _Optional[int] = ..., status: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pay_by: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_ref: _Optional[str] = ...) -> None: ...

class PayOrderRequest(_message.Message):
    __slots__ = ("id", "payment_ref", "idempotency_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REF_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    id: int
    payment_ref: str
    idempotency_key: str
    def __init__(self, id: _Optional[int] = ..., payment_ref: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ListMyOrdersRequest(_message.Message):
    __slots__ = ("cursor", "limit")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    limit: int
    def __init__(self, cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMyOrdersResponse(_message.Message):
    __slots__ = ("items", "next")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Order]
    next: str
    def __init__(self, items: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., next: _Optional[str] = ...) -> None: ...

class Sale(_message.Message):
    __slots__ = ("id", "name", "stock", "remaining", "state", "per_user_limit", "starts_at", "ends_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PER_USER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    stock: int
    remaining: int
    state: str
    per_user_limit: int
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., stock: _Optional[int] = ..., remaining: _Optional[int] = ..., state: _Optional[str] = ..., per_user_limit: _Optional[int] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSaleRequest(_message.Message):
    __slots__ = ("name", "stock", "per_user_limit", "starts_at", "ends_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    PER_USER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    stock: int
    per_user_limit: int
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., stock: _Optional[int] = ..., per_user_limit: _Optional[int] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSaleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class PlaceOrderRequest(_message.Message):
    __slots__ = ("sale_id", "quantity", "idempotency_key")
    SALE_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    sale_id: int
    quantity: int
    idempotency_key: str
    def __init__(self, sale_id: _Optional[int] = ..., quantity: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class WatchSaleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class SaleState(_message.Message):
    __slots__ = ("sale_id", "remaining", "state")
    SALE_ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    sale_id: int
    remaining: int
    state: str
    def __init__(self, sale_id: _Optional[int] = ..., remaining: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("room", "data")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    room: str
    data: str
    def __init__(self, room: _Optional[str] = ..., data: _Optional[str] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("room", "seq")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    room: str
    seq: int
    def __init__(self, room: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...
