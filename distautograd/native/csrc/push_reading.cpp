// Frame{id=1 (0 only), request=2{attachments=2{streamed_sizes=2 (packed or not)}, push_gradients=33{
// context_id=1, pass_id=2, plan=3, message_ids=4 (packed or not), gradients=5, root=6, done=7{rank=1,
// leaves=2}}}}, read field by field as protobuf reads them (a scalar set twice: the last one counts;
// uint32 fields keep a varint's low 32 bits; repeated fields in the order they come). What protobuf
// reads differently from one pass over the fields (a message field twice, which it merges) or what only
// the Python path handles (a frame id, a timeout, inline or shared attachments, another body) is not
// the common case.
#include "push_reading.h"

#include "fields.h"
#include "tensor_list.h"
#include "wire.h"

namespace distautograd::native {

namespace {

using wire::Cursor;
namespace push_field = fields::push;

// A varint field, or false when it came with another wire type.
bool varint_of(Cursor& message, const wire::Tag& tag, uint64_t* into) {
  if (tag.type != wire::kVarint) return false;
  *into = message.varint();
  return true;
}

// Attachments with streamed sizes only: the frame reader read them already (envelope.h).
bool streamed_only(Cursor attachments) {
  std::vector<uint64_t> sizes;
  while (!attachments.done()) {
    wire::Tag tag = attachments.tag();
    if (tag.field != fields::attachments::kStreamedSizes) return false;
    if (!wire::read_repeated(attachments, tag.type, sizes)) return false;
  }
  return true;
}

// A PassPlan of its own fields only, each of its own wire type: protobuf parses these bytes alone
// to the message it would have parsed inside the frame.
bool plain_plan(Cursor plan) {
  std::vector<uint64_t> ignored;
  while (!plan.done()) {
    wire::Tag tag = plan.tag();
    uint64_t value;
    bool known = tag.field == fields::plan::kActiveSends
                     ? wire::read_repeated(plan, tag.type, ignored)
                     : tag.field <= fields::plan::kLast && varint_of(plan, tag, &value);
    if (!known) return false;
    ignored.clear();
  }
  return true;
}

bool read_done(Cursor entry, PushRead* push) {
  uint64_t rank = 0, leaves = 0;
  while (!entry.done()) {
    wire::Tag tag = entry.tag();
    bool known = (tag.field == fields::part_done::kRank && varint_of(entry, tag, &rank)) ||
                 (tag.field == fields::part_done::kLeaves && varint_of(entry, tag, &leaves));
    if (!known) return false;
  }
  push->done.emplace_back(static_cast<uint32_t>(rank), static_cast<uint32_t>(leaves));
  return true;
}

bool read_body(Cursor body, PushRead* push) {
  bool has_gradients = false;
  while (!body.done()) {
    wire::Tag tag = body.tag();
    uint64_t value = 0;
    switch (tag.field) {
      case push_field::kContextId:
        if (!varint_of(body, tag, &push->context_id)) return false;
        break;
      case push_field::kPassId:
        if (!varint_of(body, tag, &push->pass_id)) return false;
        break;
      case push_field::kRoot:
        if (!varint_of(body, tag, &value)) return false;
        push->root = static_cast<uint32_t>(value);
        break;
      case push_field::kMessageIds:
        if (!wire::read_repeated(body, tag.type, push->message_ids)) return false;
        break;
      case push_field::kPlan: {
        if (tag.type != wire::kLengthDelimited || push->plan) return false;
        Cursor plan = body.delimited();
        if (!plain_plan(plan)) return false;
        push->plan = plan.rest();
        break;
      }
      case push_field::kGradients:
        if (tag.type != wire::kLengthDelimited || has_gradients) return false;
        push->gradients = body.delimited().rest();
        has_gradients = true;
        break;
      case push_field::kDone:
        if (tag.type != wire::kLengthDelimited || !read_done(body.delimited(), push)) return false;
        break;
      default:
        return false;
    }
  }
  // A list of one tensor (or None) per message id: unset gradients are an empty list.
  std::optional<TensorList> list = read_tensor_list(reinterpret_cast<const uint8_t*>(push->gradients.data()),
                                                    push->gradients.size());
  return list && list->size() == push->message_ids.size();
}

std::optional<PushRead> read_frame_push(Cursor frame) {
  std::optional<PushRead> push;
  bool has_request = false;
  while (!frame.done()) {
    wire::Tag tag = frame.tag();
    uint64_t id;
    if (tag.field == fields::frame::kId) {
      if (!varint_of(frame, tag, &id) || id != 0) return std::nullopt;
      continue;
    }
    if (tag.field != fields::frame::kRequest || tag.type != wire::kLengthDelimited || has_request) return std::nullopt;
    has_request = true;
    Cursor request = frame.delimited();
    bool has_attachments = false;
    while (!request.done()) {
      wire::Tag field = request.tag();
      if (field.type != wire::kLengthDelimited) return std::nullopt;
      if (field.field == fields::request::kAttachments && !has_attachments) {
        has_attachments = true;
        if (!streamed_only(request.delimited())) return std::nullopt;
      } else if (field.field == fields::request::kPushGradients && !push) {
        push.emplace();
        if (!read_body(request.delimited(), &*push)) return std::nullopt;
      } else {
        return std::nullopt;
      }
    }
  }
  return push;
}

}  // namespace

std::optional<PushRead> read_push(const uint8_t* data, size_t size) {
  try {
    return read_frame_push(Cursor(data, size));
  } catch (const wire::Malformed&) {
    return std::nullopt;  // protobuf's own parser reads more (groups, in unknown fields): it decides
  }
}

}  // namespace distautograd::native
