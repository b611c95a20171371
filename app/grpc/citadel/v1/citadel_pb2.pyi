from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBED_KIND_UNSPECIFIED: _ClassVar[EmbedKind]
    EMBED_KIND_DOCUMENT: _ClassVar[EmbedKind]
    EMBED_KIND_QUERY: _ClassVar[EmbedKind]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_SEMANTIC: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_DBSF: _ClassVar[Fusion]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_NOT_DOWNLOADED: _ClassVar[ModelState]
    MODEL_STATE_QUEUED: _ClassVar[ModelState]
    MODEL_STATE_DOWNLOADING: _ClassVar[ModelState]
    MODEL_STATE_RETRYING: _ClassVar[ModelState]
    MODEL_STATE_VERIFYING: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
EMBED_KIND_UNSPECIFIED: EmbedKind
EMBED_KIND_DOCUMENT: EmbedKind
EMBED_KIND_QUERY: EmbedKind
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_SEMANTIC: SearchMode
SEARCH_MODE_KEYWORD: SearchMode
SEARCH_MODE_HYBRID: SearchMode
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion
FUSION_DBSF: Fusion
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_NOT_DOWNLOADED: ModelState
MODEL_STATE_QUEUED: ModelState
MODEL_STATE_DOWNLOADING: ModelState
MODEL_STATE_RETRYING: ModelState
MODEL_STATE_VERIFYING: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_FAILED: ModelState

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "model", "normalize", "kind", "wait")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    normalize: bool
    kind: EmbedKind
    wait: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., normalize: _Optional[bool] = ..., kind: _Optional[_Union[EmbedKind, str]] = ..., wait: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "cached")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    cached: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., cached: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "dimensions", "embeddings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    dimensions: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, model: _Optional[str] = ..., dimensions: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "mode", "limit", "offset", "filter_json", "score_threshold", "vector", "similar_to", "recommend", "group_by", "diversity", "autocut", "rerank", "fusion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_TO_FIELD_NUMBER: _ClassVar[int]
    RECOMMEND_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    AUTOCUT_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    mode: SearchMode
    limit: int
    offset: int
    filter_json: str
    score_threshold: float
    vector: _containers.RepeatedScalarFieldContainer[float]
    similar_to: str
    recommend: Recommend
    group_by: GroupBy
    diversity: float
    autocut: int
    rerank: SearchRerank
    fusion: Fusion
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., filter_json: _Optional[str] = ..., score_threshold: _Optional[float] = ..., vector: _Optional[_Iterable[float]] = ..., similar_to: _Optional[str] = ..., recommend: _Optional[_Union[Recommend, _Mapping]] = ..., group_by: _Optional[_Union[GroupBy, _Mapping]] = ..., diversity: _Optional[float] = ..., autocut: _Optional[int] = ..., rerank: _Optional[_Union[SearchRerank, _Mapping]] = ..., fusion: _Optional[_Union[Fusion, str]] = ...) -> None: ...

class Recommend(_message.Message):
    __slots__ = ("positive", "negative")
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    positive: _containers.RepeatedScalarFieldContainer[str]
    negative: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, positive: _Optional[_Iterable[str]] = ..., negative: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupBy(_message.Message):
    __slots__ = ("field", "groups", "hits_per_group")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_PER_GROUP_FIELD_NUMBER: _ClassVar[int]
    field: str
    groups: int
    hits_per_group: int
    def __init__(self, field: _Optional[str] = ..., groups: _Optional[int] = ..., hits_per_group: _Optional[int] = ...) -> None: ...

class SearchRerank(_message.Message):
    __slots__ = ("model", "candidates")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    model: str
    candidates: int
    def __init__(self, model: _Optional[str] = ..., candidates: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "text", "metadata_json", "rerank_score", "collection")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    text: str
    metadata_json: str
    rerank_score: float
    collection: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ..., rerank_score: _Optional[float] = ..., collection: _Optional[str] = ...) -> None: ...

class SearchGroup(_message.Message):
    __slots__ = ("value_json", "hits")
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    value_json: str
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, value_json: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("collection", "model", "hits", "took_ms", "groups")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model: str
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    took_ms: float
    groups: _containers.RepeatedCompositeFieldContainer[SearchGroup]
    def __init__(self, collection: _Optional[str] = ..., model: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., took_ms: _Optional[float] = ..., groups: _Optional[_Iterable[_Union[SearchGroup, _Mapping]]] = ...) -> None: ...

class SearchCollectionsRequest(_message.Message):
    __slots__ = ("query", "collections", "limit", "filter_json", "mode")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    query: str
    collections: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    filter_json: str
    mode: SearchMode
    def __init__(self, query: _Optional[str] = ..., collections: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., filter_json: _Optional[str] = ..., mode: _Optional[_Union[SearchMode, str]] = ...) -> None: ...

class SearchCollectionsResponse(_message.Message):
    __slots__ = ("hits", "took_ms")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    took_ms: float
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., took_ms: _Optional[float] = ...) -> None: ...

class DocumentInput(_message.Message):
    __slots__ = ("id", "text", "metadata_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata_json: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[DocumentInput]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[DocumentInput, _Mapping]]] = ...) -> None: ...

class IngestError(_message.Message):
    __slots__ = ("index", "id", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    code: str
    message: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("ids", "inserted", "updated", "unchanged", "failed", "errors", "chunks", "warnings")
    IDS_FIELD_NUMBER: _ClassVar[int]
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    inserted: int
    updated: int
    unchanged: int
    failed: int
    errors: _containers.RepeatedCompositeFieldContainer[IngestError]
    chunks: int
    warnings: _containers.RepeatedCompositeFieldContainer[IngestError]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., inserted: _Optional[int] = ..., updated: _Optional[int] = ..., unchanged: _Optional[int] = ..., failed: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[IngestError, _Mapping]]] = ..., chunks: _Optional[int] = ..., warnings: _Optional[_Iterable[_Union[IngestError, _Mapping]]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "documents", "model", "top_n", "return_text", "raw_scores")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    query: str
    documents: _containers.RepeatedScalarFieldContainer[str]
    model: str
    top_n: int
    return_text: bool
    raw_scores: bool
    def __init__(self, query: _Optional[str] = ..., documents: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., top_n: _Optional[int] = ..., return_text: _Optional[bool] = ..., raw_scores: _Optional[bool] = ...) -> None: ...

class RerankHit(_message.Message):
    __slots__ = ("index", "score", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    text: str
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("model", "hits", "took_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    hits: _containers.RepeatedCompositeFieldContainer[RerankHit]
    took_ms: float
    def __init__(self, model: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[RerankHit, _Mapping]]] = ..., took_ms: _Optional[float] = ...) -> None: ...

class WatchModelProgressRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DownloadEvent(_message.Message):
    __slots__ = ("model", "replica", "state", "attempt", "max_attempts", "file", "bytes_done", "bytes_total", "percent", "bytes_per_second", "message", "at", "kind", "model_bytes_done", "model_bytes_total")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    model: str
    replica: str
    state: ModelState
    attempt: int
    max_attempts: int
    file: str
    bytes_done: int
    bytes_total: int
    percent: float
    bytes_per_second: float
    message: str
    at: str
    kind: str
    model_bytes_done: int
    model_bytes_total: int
    def __init__(self, model: _Optional[str] = ..., replica: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., file: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., percent: _Optional[float] = ..., bytes_per_second: _Optional[float] = ..., message: _Optional[str] = ..., at: _Optional[str] = ..., kind: _Optional[str] = ..., model_bytes_done: _Optional[int] = ..., model_bytes_total: _Optional[int] = ...) -> None: ...
