// Plans a worker's part of a pass over torch's Nodes: collect, order, parents, masks, reach, leaves --
// engine/graph.py's algorithm step for step, so the dicts it returns are PassGraph's, order included;
// the core's LocalPass takes the same plan as C++ (plan_graph) without those dicts being made.
#include "pass_graph.h"

#include "torch_nodes.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace distautograd::native {
namespace {

namespace py = pybind11;
using torch::autograd::Node;

// A node met while walking, and its Python object when one is already at hand.
struct Pending {
  NodePtr node;
  py::object object;
};

// The sources' reach of one node as bits, one per source, in as many 64-bit words as sources need.
using Mask = std::vector<uint64_t>;

py::object mask_int(const Mask& mask) {
  if (mask.size() == 1) return py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(mask[0]));
  std::string bytes(mask.size() * 8, '\0');
  for (size_t w = 0; w < mask.size(); ++w) {
    for (size_t b = 0; b < 8; ++b) bytes[w * 8 + b] = static_cast<char>((mask[w] >> (8 * b)) & 0xff);
  }
  return py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyLong_Type))
      .attr("from_bytes")(py::bytes(bytes), "little");
}

// Every node the sources reach, stopping at leaves and recv points (graph.py's _collect).
PlannedGraph collect(const std::vector<Pending>& starts, PyObject* leaf_type, const std::vector<PyObject*>& recv_types) {
  PlannedGraph walk;
  std::vector<Pending> stack(starts);
  while (!stack.empty()) {
    Pending pending = std::move(stack.back());
    stack.pop_back();
    if (walk.where.count(pending.node.get())) continue;
    PlannedNode vertex{pending.node, pending.object ? std::move(pending.object) : object_of(pending.node), {}, {}};
    PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(vertex.object.ptr()));
    bool ends = type == leaf_type || std::find(recv_types.begin(), recv_types.end(), type) != recv_types.end();
    if (!ends) {
      const auto& edges = vertex.node->next_edges();
      for (size_t i = 0; i < edges.size(); ++i) {
        if (edges[i].function) vertex.next.push_back({edges[i].function, edges[i].input_nr, i});
      }
    }
    walk.where.emplace(vertex.node.get(), walk.nodes.size());
    for (const PlannedEdge& kid : vertex.next) {
      if (!walk.where.count(kid.node.get())) stack.push_back({kid.node, py::object()});
    }
    walk.nodes.push_back(std::move(vertex));
  }
  for (PlannedNode& vertex : walk.nodes) {
    for (const PlannedEdge& kid : vertex.next) vertex.children.push_back(walk.where.at(kid.node.get()));
  }
  return walk;
}

// Latest-created first among the ready ones, as torch's engine would run them (graph.py's _topological).
std::vector<size_t> topological(const std::vector<PlannedNode>& vertices) {
  std::vector<size_t> indegree(vertices.size(), 0);
  for (const auto& vertex : vertices) {
    for (size_t child : vertex.children) ++indegree[child];
  }
  std::vector<size_t> ready;
  for (size_t v = 0; v < vertices.size(); ++v) {
    if (indegree[v] == 0) ready.push_back(v);
  }
  std::stable_sort(ready.begin(), ready.end(), [&](size_t a, size_t b) {
    return vertices[a].node->sequence_nr() < vertices[b].node->sequence_nr();
  });
  std::vector<size_t> order;
  order.reserve(vertices.size());
  while (!ready.empty()) {
    size_t v = ready.back();
    ready.pop_back();
    order.push_back(v);
    for (size_t child : vertices[v].children) {
      if (--indegree[child] == 0) ready.push_back(child);
    }
  }
  return order;
}

// Each node's sources: the ones whose edges start at it, and every source of a node above it.
std::vector<Mask> masks_of(const PlannedGraph& walk, const std::vector<size_t>& order,
                           const std::vector<std::vector<Node*>>& source_nodes, size_t words) {
  std::vector<Mask> masks(walk.nodes.size(), Mask(words, 0));
  for (size_t k = 0; k < source_nodes.size(); ++k) {
    for (Node* node : source_nodes[k]) masks[walk.where.at(node)][k / 64] |= uint64_t{1} << (k % 64);
  }
  for (size_t v : order) {
    for (size_t child : walk.nodes[v].children) {
      for (size_t w = 0; w < words; ++w) masks[child][w] |= masks[v][w];
    }
  }
  return masks;
}

// The plan as PassGraph's attributes, each dict filled in the order graph.py fills it.
py::tuple as_plan(const PlannedGraph& walk, const std::vector<py::object>& keys, PyObject* leaf_type) {
  const std::vector<PlannedNode>& vertices = walk.nodes;
  const std::vector<size_t>& order = walk.order;
  const std::vector<Mask>& masks = walk.masks;
  py::dict children, index, parents, bit, mask, reach;
  py::list order_list, leaves;
  for (const PlannedNode& vertex : vertices) {
    py::list kids;
    for (size_t j = 0; j < vertex.children.size(); ++j) {
      kids.append(py::make_tuple(vertices[vertex.children[j]].object, vertex.next[j].slot, vertex.next[j].index));
    }
    children[vertex.object] = kids;
  }
  std::vector<py::list> parents_of(vertices.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const py::object& object = vertices[order[i]].object;
    order_list.append(object);
    index[object] = i;
    parents[object] = parents_of[order[i]];
  }
  for (size_t v : order) {
    const PlannedNode& vertex = vertices[v];
    for (size_t j = 0; j < vertex.children.size(); ++j) {
      parents_of[vertex.children[j]].append(py::make_tuple(vertex.object, vertex.next[j].index, vertex.next[j].slot));
    }
  }
  size_t words = masks.empty() ? 1 : masks[0].size();
  std::vector<std::vector<size_t>> reached = walk.reach();
  for (size_t k = 0; k < keys.size(); ++k) {
    Mask one(words, 0);
    one[k / 64] = uint64_t{1} << (k % 64);
    bit[keys[k]] = mask_int(one);
    py::list nodes;
    for (size_t i : reached[k]) nodes.append(vertices[order[i]].object);
    reach[keys[k]] = nodes;
  }
  for (size_t v : order) {
    const PlannedNode& vertex = vertices[v];
    mask[vertex.object] = mask_int(masks[v]);
    if (reinterpret_cast<PyObject*>(Py_TYPE(vertex.object.ptr())) == leaf_type) leaves.append(vertex.object);
  }
  return py::make_tuple(children, order_list, index, parents, bit, mask, reach, leaves);
}

}  // namespace

std::optional<PlannedGraph> plan_graph(const std::vector<std::vector<py::handle>>& sources, PyObject* leaf_type,
                                       const std::vector<PyObject*>& recv_types) {
  std::vector<std::vector<Node*>> source_nodes;
  std::vector<Pending> starts;
  for (const auto& nodes : sources) {
    source_nodes.emplace_back();
    for (const py::handle& entry : nodes) {
      if (entry.is_none()) continue;
      NodePtr node = node_of(entry.ptr());
      if (!node) return std::nullopt;
      source_nodes.back().push_back(node.get());
      starts.push_back({node, py::reinterpret_borrow<py::object>(entry)});
    }
  }
  PlannedGraph walk = collect(starts, leaf_type, recv_types);
  walk.order = topological(walk.nodes);
  walk.masks = masks_of(walk, walk.order, source_nodes, std::max<size_t>(1, (sources.size() + 63) / 64));
  for (const auto& nodes : sources) {
    walk.sources.emplace_back();
    for (const py::handle& entry : nodes) {
      std::optional<size_t> place;
      if (!entry.is_none()) place = walk.where.at(node_of(entry.ptr()).get());
      walk.sources.back().push_back(place);
    }
  }
  return walk;
}

std::vector<std::vector<size_t>> PlannedGraph::reach() const {
  std::vector<std::vector<size_t>> reached(sources.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const std::vector<uint64_t>& mask = masks[order[i]];
    for (size_t w = 0; w < mask.size(); ++w) {
      for (uint64_t bits = mask[w]; bits; bits &= bits - 1) reached[w * 64 + __builtin_ctzll(bits)].push_back(i);
    }
  }
  return reached;
}

py::object plan_pass_graph(const py::list& sources, const py::handle& leaf_type, const py::tuple& recv_types) {
  std::vector<PyObject*> recvs;
  for (const auto& type : recv_types) recvs.push_back(type.ptr());
  std::vector<py::object> keys;
  std::vector<std::vector<py::handle>> nodes;
  for (const auto& item : sources) {
    py::tuple pair = item.cast<py::tuple>();
    keys.push_back(pair[0]);
    nodes.emplace_back();
    for (const auto& entry : pair[1].cast<py::list>()) nodes.back().push_back(entry);
  }
  std::optional<PlannedGraph> walk = plan_graph(nodes, leaf_type.ptr(), recvs);
  if (!walk) return py::none();
  return as_plan(*walk, keys, leaf_type.ptr());
}

}  // namespace distautograd::native
