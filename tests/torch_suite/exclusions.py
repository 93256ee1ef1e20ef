"""Every test of torch's three RPC test files that is not run against distautograd, each with its reason.

Two kinds only: behaviour the README lists as a deliberate difference, and what is out of scope
(CUDA, the faulty TensorPipe agent, torch's registry of C++ agents). A test named here is
reported as skipped with its reason; every other test of the classes below must pass.
"""

DELIBERATE = "deliberate difference (README, Drop-in)"
OUT_OF_SCOPE = "out of scope"

# Whole classes of the three files that are not run.
CLASSES = {
    "CudaRpcTest": f"{OUT_OF_SCOPE}: CUDA (distautograd moves CPU tensors; this machine has no GPU)",
    "TensorPipeAgentCudaRpcTest": f"{OUT_OF_SCOPE}: CUDA device maps and streams",
    "CudaDistAutogradTest": f"{OUT_OF_SCOPE}: CUDA",
    "TensorPipeCudaDistAutogradTest": f"{OUT_OF_SCOPE}: CUDA",
    "FaultyAgentDistAutogradTest": f"{OUT_OF_SCOPE}: the faulty TensorPipe agent (torch's fault injection in C++)",
}

# Single tests of the classes that are run: test method name -> why it is not.
TESTS = {
    "test_backward_unused_send_function": (
        f"{DELIBERATE}: it asserts that a backward whose loss does not reach a send point is still running "
        "after 10 s (torch's FAST mode waits for it forever); distautograd skips that send point and finishes"),
    "test_use_rpc_pickler": (
        f"{DELIBERATE}: it swaps the pickler calls go through for another and checks torch's own pickler object "
        "comes back; here every call goes through the restricted unpickler and its allowlist, which a program "
        "cannot replace (security model)"),
    "test_rref_str": (
        f"{DELIBERATE}: it expects RRef ids numbered from 0 in each process (GloballyUniqueId(created_on=0, "
        "local_id=0)); distautograd's ids count from the wall clock, so a worker that comes back under its name "
        "never reuses an id its peers still remember (the format is torch's)"),
    "test_local_value_not_on_owner": (
        f"{DELIBERATE}: the same id numbering as test_rref_str (the message is torch's, with the ids as they are)"),
    "test_profiler_with_async_rpc_udf": (
        f"{DELIBERATE}: besides what it checks under torch's legacy profiler (which passes in the other "
        "profiler tests), it asserts that torch.profiler.profile (kineto) records no rpc range; distautograd's "
        "calls show there too, named as torch names them"),
    "test_profiler_with_async_rpc_udf_single_threaded": f"{DELIBERATE}: as test_profiler_with_async_rpc_udf",
    "test_dynamic_rpc_init_rpc": (
        f"{DELIBERATE}: four ranks join a world without a world_size and rank 0 shuts down at once; here rank 0 "
        "hosts the coordinator, so ranks that had not joined yet cannot (torch's file rendezvous needs no host). "
        "Worlds without a world_size work (test_dynamic_rpc_init_rpc_without_rank, the CLI clusters)"),
    "test_register_rpc_backend_and_set_and_start_rpc_backend": (
        f"{OUT_OF_SCOPE}: it registers a stub backend in torch's registry of C++ RPC agents and mocks torch's "
        "_set_and_start_rpc_agent; distautograd has one backend, and register_backend says so"),
}
