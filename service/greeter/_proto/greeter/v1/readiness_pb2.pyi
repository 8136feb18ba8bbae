from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("status",)
    class ServingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[CheckResponse.ServingStatus]
        SERVING: _ClassVar[CheckResponse.ServingStatus]
        NOT_SERVING: _ClassVar[CheckResponse.ServingStatus]
    UNKNOWN: CheckResponse.ServingStatus
    SERVING: CheckResponse.ServingStatus
    NOT_SERVING: CheckResponse.ServingStatus
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: CheckResponse.ServingStatus
    def __init__(self, status: _Optional[_Union[CheckResponse.ServingStatus, str]] = ...) -> None: ...
