// One worker's share of a pass's graph planned over torch's autograd Nodes directly: the same
// structure engine/graph.py's PassGraph builds in Python (which nodes each source reaches, their
// order, parents and children), built here by walking Node::next_edges() instead of asking every
// node for its next_functions tuple.
#pragma once

#include <torch/extension.h>

namespace distautograd::native {

// `sources`: [(key, [node or None, ...]), ...] in the pass's order of sources, a node being the
// Python object of a grad_fn (its edges' output numbers do not matter here). Walking stops at nodes
// whose type is `leaf_type` or one of `recv_types` (the Python and the C++ recv node). Returns the
// tuple (children, order, index, parents, bit, mask, reach, leaves) exactly as PassGraph computes
// it -- same dicts, same insertion orders -- or None when a node is not one torch made (the Python
// planner then does it all).
pybind11::object plan_pass_graph(const pybind11::list& sources, const pybind11::handle& leaf_type,
                                 const pybind11::tuple& recv_types);

}  // namespace distautograd::native
