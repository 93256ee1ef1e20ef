// One worker's share of a pass's graph planned over torch's autograd Nodes directly: the same
// structure engine/graph.py's PassGraph builds in Python (which nodes each source reaches, their
// order, parents and children), built here by walking Node::next_edges() instead of asking every
// node for its next_functions tuple.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "torch_nodes.h"

namespace distautograd::native {

// An edge from a planned node to a child: the child, its input slot, and the edge's index among the
// parent's next edges (where the parent's output is).
struct PlannedEdge {
  NodePtr node;
  uint32_t slot;
  size_t index;
};

// A node the walk collected: its Python object (the key of every dict of PassGraph), its edges to
// its children, and the children's places among the collected nodes (`next` in the same order).
struct PlannedNode {
  NodePtr node;
  pybind11::object object;
  std::vector<PlannedEdge> next;
  std::vector<size_t> children;
};

// A pass's graph on one worker as C++ keeps it: the nodes in the order graph.py's _collect inserts
// them, where each Node is among them, the plan's order over them, and each node's sources as bits
// (bit k: the k-th source reaches it; as many 64-bit words as the sources need).
struct PlannedGraph {
  std::vector<PlannedNode> nodes;
  std::unordered_map<torch::autograd::Node*, size_t> where;
  std::vector<size_t> order;
  std::vector<std::vector<uint64_t>> masks;
  // Each source's edges' nodes (their places among `nodes`), none where an edge has no node.
  std::vector<std::vector<std::optional<size_t>>> sources;

  // Each source's reach (PassGraph's `reach`): the places in `order` of the nodes it reaches, in order.
  std::vector<std::vector<size_t>> reach() const;
};

// Plans the graph of `sources` (each the Python objects of its edges' nodes, None where an edge has
// none), walking down to nodes whose type is `leaf_type` or one of `recv_types`; none when a node is
// not one torch made.
std::optional<PlannedGraph> plan_graph(const std::vector<std::vector<pybind11::handle>>& sources,
                                       PyObject* leaf_type, const std::vector<PyObject*>& recv_types);

// `sources`: [(key, [node or None, ...]), ...] in the pass's order of sources, a node being the
// Python object of a grad_fn (its edges' output numbers do not matter here). Walking stops at nodes
// whose type is `leaf_type` or one of `recv_types` (the Python and the C++ recv node). Returns the
// tuple (children, order, index, parents, bit, mask, reach, leaves) exactly as PassGraph computes
// it -- same dicts, same insertion orders -- or None when a node is not one torch made (the Python
// planner then does it all).
pybind11::object plan_pass_graph(const pybind11::list& sources, const pybind11::handle& leaf_type,
                                 const pybind11::tuple& recv_types);

}  // namespace distautograd::native
