from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("id", "request", "response", "chunk")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    id: int
    request: Request
    response: Response
    chunk: Chunk
    def __init__(self, id: _Optional[int] = ..., request: _Optional[_Union[Request, _Mapping]] = ..., response: _Optional[_Union[Response, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Attachments(_message.Message):
    __slots__ = ("inline", "streamed_sizes", "shared")
    class SharedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: SharedBuffer
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[SharedBuffer, _Mapping]] = ...) -> None: ...
    INLINE_FIELD_NUMBER: _ClassVar[int]
    STREAMED_SIZES_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    inline: _containers.RepeatedScalarFieldContainer[bytes]
    streamed_sizes: _containers.RepeatedScalarFieldContainer[int]
    shared: _containers.MessageMap[int, SharedBuffer]
    def __init__(self, inline: _Optional[_Iterable[bytes]] = ..., streamed_sizes: _Optional[_Iterable[int]] = ..., shared: _Optional[_Mapping[int, SharedBuffer]] = ...) -> None: ...

class SharedBuffer(_message.Message):
    __slots__ = ("segment", "segment_size", "descriptor_attached", "lease")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_ATTACHED_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    segment: int
    segment_size: int
    descriptor_attached: bool
    lease: int
    def __init__(self, segment: _Optional[int] = ..., segment_size: _Optional[int] = ..., descriptor_attached: _Optional[bool] = ..., lease: _Optional[int] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("timeout", "attachments", "join", "heartbeat", "leave", "barrier", "pass_event", "context_event", "world_update", "abort_backward", "call", "fetch_rref", "rref_forks", "push_gradients", "release_context", "run_backward", "pass_finished", "reach", "open_contexts", "release_shared")
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    PASS_EVENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_EVENT_FIELD_NUMBER: _ClassVar[int]
    WORLD_UPDATE_FIELD_NUMBER: _ClassVar[int]
    ABORT_BACKWARD_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    FETCH_RREF_FIELD_NUMBER: _ClassVar[int]
    RREF_FORKS_FIELD_NUMBER: _ClassVar[int]
    PUSH_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RUN_BACKWARD_FIELD_NUMBER: _ClassVar[int]
    PASS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    REACH_FIELD_NUMBER: _ClassVar[int]
    OPEN_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_SHARED_FIELD_NUMBER: _ClassVar[int]
    timeout: float
    attachments: Attachments
    join: Join
    heartbeat: Heartbeat
    leave: Leave
    barrier: Barrier
    pass_event: PassEvent
    context_event: ContextEvent
    world_update: WorldUpdate
    abort_backward: AbortBackward
    call: Call
    fetch_rref: FetchRRef
    rref_forks: RRefForks
    push_gradients: PushGradients
    release_context: ReleaseContext
    run_backward: RunBackward
    pass_finished: PassFinished
    reach: ReachRequest
    open_contexts: OpenContexts
    release_shared: ReleaseShared
    def __init__(self, timeout: _Optional[float] = ..., attachments: _Optional[_Union[Attachments, _Mapping]] = ..., join: _Optional[_Union[Join, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ..., barrier: _Optional[_Union[Barrier, _Mapping]] = ..., pass_event: _Optional[_Union[PassEvent, _Mapping]] = ..., context_event: _Optional[_Union[ContextEvent, _Mapping]] = ..., world_update: _Optional[_Union[WorldUpdate, _Mapping]] = ..., abort_backward: _Optional[_Union[AbortBackward, _Mapping]] = ..., call: _Optional[_Union[Call, _Mapping]] = ..., fetch_rref: _Optional[_Union[FetchRRef, _Mapping]] = ..., rref_forks: _Optional[_Union[RRefForks, _Mapping]] = ..., push_gradients: _Optional[_Union[PushGradients, _Mapping]] = ..., release_context: _Optional[_Union[ReleaseContext, _Mapping]] = ..., run_backward: _Optional[_Union[RunBackward, _Mapping]] = ..., pass_finished: _Optional[_Union[PassFinished, _Mapping]] = ..., reach: _Optional[_Union[ReachRequest, _Mapping]] = ..., open_contexts: _Optional[_Union[OpenContexts, _Mapping]] = ..., release_shared: _Optional[_Union[ReleaseShared, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("error", "attachments", "profiled", "empty", "join", "value", "reach", "open_contexts")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    PROFILED_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REACH_FIELD_NUMBER: _ClassVar[int]
    OPEN_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    attachments: Attachments
    profiled: _containers.RepeatedCompositeFieldContainer[ProfiledEvent]
    empty: Empty
    join: JoinReply
    value: Value
    reach: ReachReply
    open_contexts: OpenContexts
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., attachments: _Optional[_Union[Attachments, _Mapping]] = ..., profiled: _Optional[_Iterable[_Union[ProfiledEvent, _Mapping]]] = ..., empty: _Optional[_Union[Empty, _Mapping]] = ..., join: _Optional[_Union[JoinReply, _Mapping]] = ..., value: _Optional[_Union[Value, _Mapping]] = ..., reach: _Optional[_Union[ReachReply, _Mapping]] = ..., open_contexts: _Optional[_Union[OpenContexts, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "remote_type", "remote_traceback", "worker")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    remote_type: str
    remote_traceback: str
    worker: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., remote_type: _Optional[str] = ..., remote_traceback: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("pickle", "tensors", "rrefs", "tensor_list", "none_at")
    PICKLE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    RREFS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_LIST_FIELD_NUMBER: _ClassVar[int]
    NONE_AT_FIELD_NUMBER: _ClassVar[int]
    pickle: bytes
    tensors: _containers.RepeatedCompositeFieldContainer[TensorMeta]
    rrefs: _containers.RepeatedCompositeFieldContainer[RRefHandle]
    tensor_list: bool
    none_at: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pickle: _Optional[bytes] = ..., tensors: _Optional[_Iterable[_Union[TensorMeta, _Mapping]]] = ..., rrefs: _Optional[_Iterable[_Union[RRefHandle, _Mapping]]] = ..., tensor_list: _Optional[bool] = ..., none_at: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorMeta(_message.Message):
    __slots__ = ("dtype", "shape", "attachment", "requires_grad", "parameter", "autograd_message_id", "quantization", "activates", "activates_unknown", "zeros", "sparse", "strides", "conj", "neg")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_GRAD_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    AUTOGRAD_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATES_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    ZEROS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    CONJ_FIELD_NUMBER: _ClassVar[int]
    NEG_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    attachment: int
    requires_grad: bool
    parameter: bool
    autograd_message_id: int
    quantization: Quantization
    activates: _containers.RepeatedScalarFieldContainer[int]
    activates_unknown: bool
    zeros: bool
    sparse: Sparse
    strides: _containers.RepeatedScalarFieldContainer[int]
    conj: bool
    neg: bool
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., attachment: _Optional[int] = ..., requires_grad: _Optional[bool] = ..., parameter: _Optional[bool] = ..., autograd_message_id: _Optional[int] = ..., quantization: _Optional[_Union[Quantization, _Mapping]] = ..., activates: _Optional[_Iterable[int]] = ..., activates_unknown: _Optional[bool] = ..., zeros: _Optional[bool] = ..., sparse: _Optional[_Union[Sparse, _Mapping]] = ..., strides: _Optional[_Iterable[int]] = ..., conj: _Optional[bool] = ..., neg: _Optional[bool] = ...) -> None: ...

class Sparse(_message.Message):
    __slots__ = ("layout", "parts", "coalesced")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    layout: str
    parts: _containers.RepeatedCompositeFieldContainer[TensorMeta]
    coalesced: bool
    def __init__(self, layout: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[TensorMeta, _Mapping]]] = ..., coalesced: _Optional[bool] = ...) -> None: ...

class Quantization(_message.Message):
    __slots__ = ("qscheme", "scale", "zero_point", "scales_attachment", "zero_points_attachment", "axis", "dtype")
    QSCHEME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    SCALES_ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINTS_ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    qscheme: str
    scale: float
    zero_point: int
    scales_attachment: int
    zero_points_attachment: int
    axis: int
    dtype: str
    def __init__(self, qscheme: _Optional[str] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ..., scales_attachment: _Optional[int] = ..., zero_points_attachment: _Optional[int] = ..., axis: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...

class RRefHandle(_message.Message):
    __slots__ = ("rref_id", "owner", "fork_id")
    RREF_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FORK_ID_FIELD_NUMBER: _ClassVar[int]
    rref_id: int
    owner: int
    fork_id: int
    def __init__(self, rref_id: _Optional[int] = ..., owner: _Optional[int] = ..., fork_id: _Optional[int] = ...) -> None: ...

class WorkerEntry(_message.Message):
    __slots__ = ("name", "rank", "address", "daemon", "pid", "host", "socket_address", "unix_path", "host_id", "incarnation", "unreachable", "silent_ms", "message_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DAEMON_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SOCKET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNIX_PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    SILENT_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    address: str
    daemon: bool
    pid: int
    host: str
    socket_address: str
    unix_path: str
    host_id: str
    incarnation: int
    unreachable: bool
    silent_ms: int
    message_path: str
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., address: _Optional[str] = ..., daemon: _Optional[bool] = ..., pid: _Optional[int] = ..., host: _Optional[str] = ..., socket_address: _Optional[str] = ..., unix_path: _Optional[str] = ..., host_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., unreachable: _Optional[bool] = ..., silent_ms: _Optional[int] = ..., message_path: _Optional[str] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("name", "rank", "address", "world_size", "daemon", "pid", "host", "version", "socket_address", "unix_path", "host_id", "incarnation", "message_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    DAEMON_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOCKET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNIX_PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    address: str
    world_size: int
    daemon: bool
    pid: int
    host: str
    version: str
    socket_address: str
    unix_path: str
    host_id: str
    incarnation: int
    message_path: str
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., address: _Optional[str] = ..., world_size: _Optional[int] = ..., daemon: _Optional[bool] = ..., pid: _Optional[int] = ..., host: _Optional[str] = ..., version: _Optional[str] = ..., socket_address: _Optional[str] = ..., unix_path: _Optional[str] = ..., host_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., message_path: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("rank", "world", "heartbeat_interval")
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    rank: int
    world: WorldUpdate
    heartbeat_interval: float
    def __init__(self, rank: _Optional[int] = ..., world: _Optional[_Union[WorldUpdate, _Mapping]] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class Departure(_message.Message):
    __slots__ = ("name", "rank", "reason", "failed", "incarnation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    reason: str
    failed: bool
    incarnation: int
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., reason: _Optional[str] = ..., failed: _Optional[bool] = ..., incarnation: _Optional[int] = ...) -> None: ...

class WorldUpdate(_message.Message):
    __slots__ = ("version", "workers", "departed", "cannot_form")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEPARTED_FIELD_NUMBER: _ClassVar[int]
    CANNOT_FORM_FIELD_NUMBER: _ClassVar[int]
    version: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerEntry]
    departed: _containers.RepeatedCompositeFieldContainer[Departure]
    cannot_form: str
    def __init__(self, version: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerEntry, _Mapping]]] = ..., departed: _Optional[_Iterable[_Union[Departure, _Mapping]]] = ..., cannot_form: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("contexts", "passes", "shares")
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    contexts: int
    passes: int
    shares: _containers.RepeatedCompositeFieldContainer[PeerShare]
    def __init__(self, contexts: _Optional[int] = ..., passes: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[PeerShare, _Mapping]]] = ...) -> None: ...

class PeerShare(_message.Message):
    __slots__ = ("peer", "resource", "used", "limit")
    PEER_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    peer: str
    resource: str
    used: int
    limit: int
    def __init__(self, peer: _Optional[str] = ..., resource: _Optional[str] = ..., used: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("graceful",)
    GRACEFUL_FIELD_NUMBER: _ClassVar[int]
    graceful: bool
    def __init__(self, graceful: _Optional[bool] = ...) -> None: ...

class Barrier(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("name", "rank", "token", "target", "token_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    token: str
    target: str
    token_only: bool
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., token: _Optional[str] = ..., target: _Optional[str] = ..., token_only: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("error", "code", "world_token")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    WORLD_TOKEN_FIELD_NUMBER: _ClassVar[int]
    error: str
    code: int
    world_token: str
    def __init__(self, error: _Optional[str] = ..., code: _Optional[int] = ..., world_token: _Optional[str] = ...) -> None: ...

class ReleaseShared(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, leases: _Optional[_Iterable[int]] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("function", "context_id", "create_rref", "creator_fork", "anomaly", "inspect", "trace_id", "profile")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_RREF_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FORK_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_FIELD_NUMBER: _ClassVar[int]
    INSPECT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    function: Value
    context_id: int
    create_rref: int
    creator_fork: int
    anomaly: int
    inspect: int
    trace_id: int
    profile: Profile
    def __init__(self, function: _Optional[_Union[Value, _Mapping]] = ..., context_id: _Optional[int] = ..., create_rref: _Optional[int] = ..., creator_fork: _Optional[int] = ..., anomaly: _Optional[int] = ..., inspect: _Optional[int] = ..., trace_id: _Optional[int] = ..., profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("shapes", "memory")
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    shapes: bool
    memory: bool
    def __init__(self, shapes: _Optional[bool] = ..., memory: _Optional[bool] = ...) -> None: ...

class ProfiledEvent(_message.Message):
    __slots__ = ("kind", "name", "thread", "handle", "shapes", "cpu_memory", "cpu_ns", "node")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    THREAD_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    CPU_MEMORY_FIELD_NUMBER: _ClassVar[int]
    CPU_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    thread: int
    handle: int
    shapes: _containers.RepeatedCompositeFieldContainer[Dims]
    cpu_memory: int
    cpu_ns: int
    node: int
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., thread: _Optional[int] = ..., handle: _Optional[int] = ..., shapes: _Optional[_Iterable[_Union[Dims, _Mapping]]] = ..., cpu_memory: _Optional[int] = ..., cpu_ns: _Optional[int] = ..., node: _Optional[int] = ...) -> None: ...

class Dims(_message.Message):
    __slots__ = ("sizes",)
    SIZES_FIELD_NUMBER: _ClassVar[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class FetchRRef(_message.Message):
    __slots__ = ("rref_id", "context_id")
    RREF_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    rref_id: int
    context_id: int
    def __init__(self, rref_id: _Optional[int] = ..., context_id: _Optional[int] = ...) -> None: ...

class ForkChange(_message.Message):
    __slots__ = ("rref_id", "fork_id", "add", "holder")
    RREF_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    rref_id: int
    fork_id: int
    add: bool
    holder: int
    def __init__(self, rref_id: _Optional[int] = ..., fork_id: _Optional[int] = ..., add: _Optional[bool] = ..., holder: _Optional[int] = ...) -> None: ...

class RRefForks(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[ForkChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[ForkChange, _Mapping]]] = ...) -> None: ...

class PassPlan(_message.Message):
    __slots__ = ("root", "active_sends", "retain_graph", "create_graph", "anomaly", "capture", "inspect")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SENDS_FIELD_NUMBER: _ClassVar[int]
    RETAIN_GRAPH_FIELD_NUMBER: _ClassVar[int]
    CREATE_GRAPH_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    INSPECT_FIELD_NUMBER: _ClassVar[int]
    root: int
    active_sends: _containers.RepeatedScalarFieldContainer[int]
    retain_graph: bool
    create_graph: bool
    anomaly: int
    capture: bool
    inspect: int
    def __init__(self, root: _Optional[int] = ..., active_sends: _Optional[_Iterable[int]] = ..., retain_graph: _Optional[bool] = ..., create_graph: _Optional[bool] = ..., anomaly: _Optional[int] = ..., capture: _Optional[bool] = ..., inspect: _Optional[int] = ...) -> None: ...

class RunBackward(_message.Message):
    __slots__ = ("context_id", "pass_id", "plan")
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PASS_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    pass_id: int
    plan: PassPlan
    def __init__(self, context_id: _Optional[int] = ..., pass_id: _Optional[int] = ..., plan: _Optional[_Union[PassPlan, _Mapping]] = ...) -> None: ...

class PushGradients(_message.Message):
    __slots__ = ("context_id", "pass_id", "plan", "message_ids", "gradients", "root", "done")
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PASS_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    pass_id: int
    plan: PassPlan
    message_ids: _containers.RepeatedScalarFieldContainer[int]
    gradients: Value
    root: int
    done: _containers.RepeatedCompositeFieldContainer[PartDone]
    def __init__(self, context_id: _Optional[int] = ..., pass_id: _Optional[int] = ..., plan: _Optional[_Union[PassPlan, _Mapping]] = ..., message_ids: _Optional[_Iterable[int]] = ..., gradients: _Optional[_Union[Value, _Mapping]] = ..., root: _Optional[int] = ..., done: _Optional[_Iterable[_Union[PartDone, _Mapping]]] = ...) -> None: ...

class PartDone(_message.Message):
    __slots__ = ("rank", "leaves")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    leaves: int
    def __init__(self, rank: _Optional[int] = ..., leaves: _Optional[int] = ...) -> None: ...

class PassFinished(_message.Message):
    __slots__ = ("context_id", "pass_id", "error", "leaves", "done")
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PASS_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    pass_id: int
    error: Error
    leaves: int
    done: _containers.RepeatedCompositeFieldContainer[PartDone]
    def __init__(self, context_id: _Optional[int] = ..., pass_id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., leaves: _Optional[int] = ..., done: _Optional[_Iterable[_Union[PartDone, _Mapping]]] = ...) -> None: ...

class AbortBackward(_message.Message):
    __slots__ = ("context_id", "pass_id", "error")
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PASS_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    pass_id: int
    error: Error
    def __init__(self, context_id: _Optional[int] = ..., pass_id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ReachRequest(_message.Message):
    __slots__ = ("context_id", "message_ids")
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    message_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, context_id: _Optional[int] = ..., message_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Reach(_message.Message):
    __slots__ = ("message_id", "activates", "unknown")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    activates: _containers.RepeatedScalarFieldContainer[int]
    unknown: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, message_id: _Optional[int] = ..., activates: _Optional[_Iterable[int]] = ..., unknown: _Optional[_Iterable[int]] = ...) -> None: ...

class ReachReply(_message.Message):
    __slots__ = ("reaches",)
    REACHES_FIELD_NUMBER: _ClassVar[int]
    reaches: _containers.RepeatedCompositeFieldContainer[Reach]
    def __init__(self, reaches: _Optional[_Iterable[_Union[Reach, _Mapping]]] = ...) -> None: ...

class PassEvent(_message.Message):
    __slots__ = ("context_id", "pass_id", "participants", "ended", "failed", "leaves")
    class LeavesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PASS_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    pass_id: int
    participants: _containers.RepeatedScalarFieldContainer[int]
    ended: bool
    failed: bool
    leaves: _containers.ScalarMap[int, int]
    def __init__(self, context_id: _Optional[int] = ..., pass_id: _Optional[int] = ..., participants: _Optional[_Iterable[int]] = ..., ended: _Optional[bool] = ..., failed: _Optional[bool] = ..., leaves: _Optional[_Mapping[int, int]] = ...) -> None: ...

class ContextEvent(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, closed: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseContext(_message.Message):
    __slots__ = ("context_ids",)
    CONTEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    context_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, context_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class OpenContexts(_message.Message):
    __slots__ = ("context_ids",)
    CONTEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    context_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, context_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker", "seconds_since_heartbeat", "contexts", "passes", "shares")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerEntry
    seconds_since_heartbeat: float
    contexts: int
    passes: int
    shares: _containers.RepeatedCompositeFieldContainer[PeerShare]
    def __init__(self, worker: _Optional[_Union[WorkerEntry, _Mapping]] = ..., seconds_since_heartbeat: _Optional[float] = ..., contexts: _Optional[int] = ..., passes: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[PeerShare, _Mapping]]] = ...) -> None: ...

class ContextStatus(_message.Message):
    __slots__ = ("context_id", "participants", "passes", "passes_in_flight", "leaves_with_gradients")
    class LeavesWithGradientsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    PASSES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LEAVES_WITH_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    context_id: int
    participants: _containers.RepeatedScalarFieldContainer[int]
    passes: int
    passes_in_flight: int
    leaves_with_gradients: _containers.ScalarMap[int, int]
    def __init__(self, context_id: _Optional[int] = ..., participants: _Optional[_Iterable[int]] = ..., passes: _Optional[int] = ..., passes_in_flight: _Optional[int] = ..., leaves_with_gradients: _Optional[_Mapping[int, int]] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("workers", "contexts", "departed")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    DEPARTED_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    contexts: _containers.RepeatedCompositeFieldContainer[ContextStatus]
    departed: _containers.RepeatedCompositeFieldContainer[Departure]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., contexts: _Optional[_Iterable[_Union[ContextStatus, _Mapping]]] = ..., departed: _Optional[_Iterable[_Union[Departure, _Mapping]]] = ...) -> None: ...

class Endpoints(_message.Message):
    __slots__ = ("socket_port", "unix_path", "host_id")
    SOCKET_PORT_FIELD_NUMBER: _ClassVar[int]
    UNIX_PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    socket_port: int
    unix_path: str
    host_id: str
    def __init__(self, socket_port: _Optional[int] = ..., unix_path: _Optional[str] = ..., host_id: _Optional[str] = ...) -> None: ...
