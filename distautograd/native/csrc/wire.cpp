// Protobuf's wire format, read defensively (a varint longer than ten bytes, a tag or a length longer than
// five, as protobuf's parser refuses them, a length past the end, field number 0 and groups are Malformed;
// nothing reads outside the span) and written.
#include "wire.h"

namespace distautograd::native::wire {

uint64_t Cursor::varint() {
  uint64_t value = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (at_ == end_) throw Malformed("a varint runs past the end");
    uint8_t byte = *at_++;
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;  // bits past 64 are dropped, as protobuf does
    if (!(byte & 0x80)) return value;
  }
  throw Malformed("a varint longer than ten bytes");
}

uint64_t Cursor::short_varint(int bytes, const char* what) {
  const uint8_t* start = at_;
  uint64_t value = varint();
  if (at_ - start > bytes) throw Malformed(std::string(what) + " longer than " + std::to_string(bytes) + " bytes");
  return value;
}

Tag Cursor::tag() {
  uint64_t key = short_varint(5, "a tag");
  if (key >> 32) throw Malformed("a tag over 32 bits");
  Tag tag{static_cast<uint32_t>(key >> 3), static_cast<uint32_t>(key & 7)};
  if (tag.field == 0) throw Malformed("field number 0");
  return tag;
}

Cursor Cursor::delimited() {
  uint64_t length = short_varint(5, "a length");
  if (length > static_cast<uint64_t>(end_ - at_)) throw Malformed("a length-delimited field runs past the end");
  Cursor inner(at_, static_cast<size_t>(length));
  at_ += length;
  return inner;
}

void Cursor::skip(uint32_t type) {
  size_t width = 0;
  switch (type) {
    case kVarint:
      varint();
      return;
    case kLengthDelimited:
      delimited();
      return;
    case kFixed64:
      width = 8;
      break;
    case kFixed32:
      width = 4;
      break;
    default:
      throw Malformed("wire type " + std::to_string(type) + " (groups are not part of this protocol)");
  }
  if (width > static_cast<size_t>(end_ - at_)) throw Malformed("a fixed-width field runs past the end");
  at_ += width;
}

void Writer::varint(uint64_t value) {
  while (value >= 0x80) {
    out_.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out_.push_back(static_cast<char>(value));
}

void Writer::varint_field(uint32_t field, uint64_t value) {
  tag(field, kVarint);
  varint(value);
}

void Writer::bytes_field(uint32_t field, const std::string& value) {
  tag(field, kLengthDelimited);
  varint(value.size());
  out_ += value;
}

void Writer::packed_field(uint32_t field, const uint64_t* values, size_t count) {
  if (!count) return;
  std::string packed;
  Writer inner(packed);
  for (size_t i = 0; i < count; ++i) inner.varint(values[i]);
  bytes_field(field, packed);
}

}  // namespace distautograd::native::wire
