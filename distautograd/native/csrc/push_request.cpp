// push_request.h: a PushGradients request's fields written in field-number order, as protobuf writes
// them (proto3: a field that holds its default is left out).
#include "push_request.h"

#include <stdexcept>
#include <string>

#include "fields.h"
#include "tensor_codec.h"
#include "wire.h"

namespace distautograd::native {

namespace {

void nonzero_varint(wire::Writer& out, uint32_t field, uint64_t value) {
  if (value) out.varint_field(field, value);
}

}  // namespace

pybind11::object encode_push_request(uint64_t context_id, uint64_t pass_id, const std::optional<pybind11::bytes>& plan,
                                     const std::vector<uint64_t>& message_ids, const pybind11::list& gradients,
                                     uint32_t root, const std::vector<std::pair<uint32_t, uint32_t>>& done,
                                     bool compact_zeros) {
  if (message_ids.size() != gradients.size()) {
    throw pybind11::value_error("a push carries one gradient per message id: " + std::to_string(message_ids.size()) +
                                " ids, " + std::to_string(gradients.size()) + " gradients");
  }
  pybind11::object coded = encode_tensor_list(gradients, compact_zeros);
  if (coded.is_none()) return coded;
  auto value_and_attachments = coded.cast<pybind11::tuple>();
  std::string push;
  wire::Writer out(push);
  nonzero_varint(out, fields::push::kContextId, context_id);
  nonzero_varint(out, fields::push::kPassId, pass_id);
  if (plan) out.bytes_field(fields::push::kPlan, *plan);  // present even when empty: the receiver asks HasField
  out.packed_field(fields::push::kMessageIds, message_ids.data(), message_ids.size());
  out.bytes_field(fields::push::kGradients, value_and_attachments[0].cast<std::string>());  // a Value: never empty
  nonzero_varint(out, fields::push::kRoot, root);
  for (const auto& [rank, leaves] : done) {
    std::string entry;
    wire::Writer part(entry);
    nonzero_varint(part, fields::part_done::kRank, rank);
    nonzero_varint(part, fields::part_done::kLeaves, leaves);
    out.bytes_field(fields::push::kDone, entry);
  }
  std::string request;
  wire::Writer(request).bytes_field(fields::request::kPushGradients, push);
  return pybind11::make_tuple(pybind11::bytes(request), value_and_attachments[1]);
}

}  // namespace distautograd::native
