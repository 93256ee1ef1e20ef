// Reads protobuf's wire format from bytes a peer chose: varints, tags and length-delimited fields,
// every length checked against the bytes that are there. Knows no message; envelope.cpp does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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
  uint64_t varint();
  Tag tag();
  // The contents of a length-delimited field (its tag already read); the cursor moves past them.
  Cursor delimited();
  // Moves past a field's value of wire type `type` (its tag already read).
  void skip(uint32_t type);

 private:
  const uint8_t* at_;
  const uint8_t* end_;
};

}  // namespace distautograd::native::wire
