from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_ROLE_TRAINING: _ClassVar[SampleRole]
    SAMPLE_ROLE_REGULARIZATION: _ClassVar[SampleRole]
SAMPLE_ROLE_TRAINING: SampleRole
SAMPLE_ROLE_REGULARIZATION: SampleRole

class StreamSamplesRequest(_message.Message):
    __slots__ = ("sample_ids", "as_stored", "encoding", "quality", "random_crop")
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    AS_STORED_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CROP_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    as_stored: bool
    encoding: str
    quality: int
    random_crop: bool
    def __init__(self, sample_ids: _Optional[_Iterable[int]] = ..., as_stored: _Optional[bool] = ..., encoding: _Optional[str] = ..., quality: _Optional[int] = ..., random_crop: _Optional[bool] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("sample_id", "image", "caption", "width", "height", "bucket_width", "bucket_height", "encoding")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_WIDTH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    sample_id: int
    image: bytes
    caption: str
    width: int
    height: int
    bucket_width: int
    bucket_height: int
    encoding: str
    def __init__(self, sample_id: _Optional[int] = ..., image: _Optional[bytes] = ..., caption: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., bucket_width: _Optional[int] = ..., bucket_height: _Optional[int] = ..., encoding: _Optional[str] = ...) -> None: ...

class ListSamplesRequest(_message.Message):
    __slots__ = ("after_id", "limit")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    limit: int
    def __init__(self, after_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SampleRef(_message.Message):
    __slots__ = ("sample_id", "bucket_width", "bucket_height", "role")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_WIDTH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    sample_id: int
    bucket_width: int
    bucket_height: int
    role: SampleRole
    def __init__(self, sample_id: _Optional[int] = ..., bucket_width: _Optional[int] = ..., bucket_height: _Optional[int] = ..., role: _Optional[_Union[SampleRole, str]] = ...) -> None: ...

class ListSamplesResponse(_message.Message):
    __slots__ = ("samples", "has_more")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[SampleRef]
    has_more: bool
    def __init__(self, samples: _Optional[_Iterable[_Union[SampleRef, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BucketCount(_message.Message):
    __slots__ = ("width", "height", "count")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    count: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("samples", "buckets", "skipped", "roles")
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RolesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    samples: int
    buckets: _containers.RepeatedCompositeFieldContainer[BucketCount]
    skipped: _containers.ScalarMap[str, int]
    roles: _containers.ScalarMap[str, int]
    def __init__(self, samples: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[BucketCount, _Mapping]]] = ..., skipped: _Optional[_Mapping[str, int]] = ..., roles: _Optional[_Mapping[str, int]] = ...) -> None: ...
