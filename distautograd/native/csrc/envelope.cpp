// A Frame's envelope read without a protobuf library: Frame{request=2 | response=3 | chunk=4},
// Request/Response{attachments=2}, Attachments{streamed_sizes=2 (packed or not), shared=3 (map
// entries, key=1, value=2)}. Fields it does not need, and known fields with another wire type, are skipped
// as protobuf skips unknown fields; a message field set twice merges, and setting the other member
// of the oneof starts it afresh, as protobuf does.
#include "envelope.h"

#include "fields.h"
#include "wire.h"

namespace distautograd::native {

namespace {

using wire::Cursor;
using fields::attachments::kShared;
using fields::attachments::kStreamedSizes;
using fields::frame::kChunk;
using fields::frame::kRequest;
using fields::frame::kResponse;
using fields::request::kAttachments;

constexpr uint32_t kMapKey = 1, kMapValue = 2;  // a map entry

// A map entry's key; an entry with a field other than its key and value is not in the map (protobuf
// keeps the whole entry among the message's unknown fields instead).
void read_map_key(Cursor entry, Envelope& envelope) {
  uint64_t key = 0;  // an entry without a key has key 0
  while (!entry.done()) {
    wire::Tag tag = entry.tag();
    if (tag.field == kMapKey && tag.type == wire::kVarint) {
      key = entry.varint();
    } else if (tag.field == kMapValue && tag.type == wire::kLengthDelimited) {
      entry.delimited();
    } else {
      entry.skip(tag.type);
      while (!entry.done()) entry.skip(entry.tag().type);  // still well-formed, or Malformed
      return;
    }
  }
  envelope.shared.insert(static_cast<uint32_t>(key));  // uint32 keys keep their low 32 bits
}

void read_attachments(Cursor attachments, Envelope& envelope) {
  while (!attachments.done()) {
    wire::Tag tag = attachments.tag();
    if (tag.field == kStreamedSizes && wire::read_repeated(attachments, tag.type, envelope.streamed_sizes)) {
      continue;
    }
    if (tag.field == kShared && tag.type == wire::kLengthDelimited) {
      read_map_key(attachments.delimited(), envelope);
    } else {
      attachments.skip(tag.type);
    }
  }
}

void read_message(Cursor message, Envelope& envelope) {
  while (!message.done()) {
    wire::Tag tag = message.tag();
    if (tag.field == kAttachments && tag.type == wire::kLengthDelimited) {
      read_attachments(message.delimited(), envelope);
    } else {
      message.skip(tag.type);
    }
  }
}

}  // namespace

uint64_t Envelope::following() const {
  uint64_t total = 0;
  for (size_t i = 0; i < streamed_sizes.size(); ++i) {
    if (shared.count(static_cast<uint32_t>(i))) continue;
    uint64_t size = streamed_sizes[i];
    total = size > UINT64_MAX - total ? UINT64_MAX : total + size;
  }
  return total;
}

Envelope read_envelope(const uint8_t* data, size_t size) {
  Envelope envelope;
  Cursor frame(data, size);
  while (!frame.done()) {
    wire::Tag tag = frame.tag();
    bool member = tag.field == kRequest || tag.field == kResponse || tag.field == kChunk;
    if (!member || tag.type != wire::kLengthDelimited) {
      frame.skip(tag.type);
      continue;
    }
    if (tag.field != envelope.kind) {  // the oneof switches: what the other member said is gone
      envelope = Envelope();
      envelope.kind = tag.field;
    }
    Cursor body = frame.delimited();
    if (tag.field != kChunk) read_message(body, envelope);
  }
  return envelope;
}

}  // namespace distautograd::native
