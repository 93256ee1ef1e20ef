// Protobuf's wire format: read from bytes a peer chose (varints, tags and length-delimited fields,
// every length checked against the bytes that are there), and written. Knows no message;
// envelope.cpp and tensor_list.cpp do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace distautograd::native::wire {

// Bytes that are not protobuf, or protobuf this protocol never sends (groups).
struct Malformed : std::runtime_error {
  explicit Malformed(const std::string& what) : std::runtime_error(what) {}
};

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

struct Tag {
  uint32_t field;
  uint32_t type;
};

// A read position in a span of bytes it does not own.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size) : at_(data), end_(data + size) {}

  bool done() const { return at_ == end_; }
  // What is left to read, as bytes (a string field's contents, once `delimited` gave its cursor).
  std::string rest() const { return std::string(reinterpret_cast<const char*>(at_), static_cast<size_t>(end_ - at_)); }
  uint64_t varint();
  // A field's tag; as protobuf, Malformed when its varint takes more than five bytes.
  Tag tag();
  // The contents of a length-delimited field (its tag already read); the cursor moves past them. As
  // protobuf, Malformed when the length's varint takes more than five bytes.
  Cursor delimited();
  // Moves past a field's value of wire type `type` (its tag already read).
  void skip(uint32_t type);

 private:
  // A varint of at most `bytes` bytes (a tag's, a length's); Malformed when it takes more.
  uint64_t short_varint(int bytes, const char* what);

  const uint8_t* at_;
  const uint8_t* end_;
};

// Appends a repeated integer field's values, packed or one by one (its tag already read); false, with
// nothing read, for another wire type. Each value keeps the low bits T holds, as protobuf's do.
template <typename T>
bool read_repeated(Cursor& message, uint32_t type, std::vector<T>& into) {
  if (type == kVarint) {
    into.push_back(static_cast<T>(message.varint()));
    return true;
  }
  if (type != kLengthDelimited) return false;
  Cursor packed = message.delimited();
  while (!packed.done()) into.push_back(static_cast<T>(packed.varint()));
  return true;
}

// Appends fields to a message being written, in the order they are given (protobuf's own
// serializers write them by field number; so do the callers, so the bytes are the same).
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}

  void varint(uint64_t value);
  void tag(uint32_t field, uint32_t type) { varint((static_cast<uint64_t>(field) << 3) | type); }
  void varint_field(uint32_t field, uint64_t value);
  void bytes_field(uint32_t field, const std::string& value);
  // A repeated integer field, packed as proto3 packs it (nothing at all when it is empty).
  void packed_field(uint32_t field, const uint64_t* values, size_t count);

 private:
  std::string& out_;
};

}  // namespace distautograd::native::wire
