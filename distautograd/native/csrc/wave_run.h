// One call of torch's engine for a wave of a worker's part, on the native path (engine/execution.py's
// run_wave when the leaves accumulate, no graph is made and every recv node is C++): the leaves' slots
// swapped in, the recv nodes' gradients recorded, torch's engine run without the GIL, the slots
// swapped back -- one call from Python instead of a context manager, a recording and the engine's
// Python entry.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "recv_node.h"
#include "torch_nodes.h"

namespace distautograd::native {

// `roots`: GradientEdges, each given its gradient in `grads`; `leaves`: the AccumulateGrad nodes to
// run (they accumulate into `store`, {leaf tensor: gradient}, while `lock` -- slots.LOCK -- is held);
// `anchors`: the anchors' nodes of the recv nodes to run. Returns {message id: gradient or None} of
// every recv point those nodes recorded. An error in the engine (a Python hook's too) is raised as
// torch raises it, after the slots are restored.
pybind11::dict run_wave(const pybind11::list& roots, const std::vector<at::Tensor>& grads,
                        const pybind11::list& leaves, const pybind11::list& anchors, const pybind11::dict& store,
                        const pybind11::object& lock, bool retain_graph);

// The same for a caller in C++ (local_pass.cpp): the roots as torch's edges, the leaves and the anchors
// as nodes; gives what the recv nodes recorded, (message id, gradient or undefined), in the order they ran.
// The engine's warnings become Python's as the wave ends, as they do after torch's own Python entry.
std::vector<std::pair<MessageId, at::Tensor>> run_wave_nodes(const torch::autograd::edge_list& roots,
                                                           const std::vector<at::Tensor>& grads,
                                                           const std::vector<NodePtr>& leaves,
                                                           const std::vector<NodePtr>& anchors,
                                                           const pybind11::dict& store, const pybind11::object& lock,
                                                           bool retain_graph);

}  // namespace distautograd::native
