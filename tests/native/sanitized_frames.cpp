// The compiled frame reader's hostile-input test, built with AddressSanitizer and UBSan by
// test_sanitized.py: random and mutated protobuf through read_envelope, and random streams (frames,
// junk, truncation, descriptors) through FrameReader on a Unix socket pair and a TCP connection; then
// frames the compiled writer sends (attachments of every size, descriptors in groups) read back whole,
// part of them at times by read_ready (what is there) before read_into (the rest).
// Any read outside a buffer, leak of a descriptor's slot, or undefined behaviour aborts the run.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "envelope.h"
#include "frame_reader.h"
#include "frame_writer.h"
#include "hostile.h"
#include "wire.h"

using distautograd::native::Envelope;
using distautograd::native::FrameReader;

namespace {

using hostile::below;
using hostile::mutate;
using hostile::rng;

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_field(std::string& out, uint32_t field, const std::string& body) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | 2);
  put_varint(out, body.size());
  out += body;
}

// Protobuf a peer might write: Frame{request|response{attachments{sizes, shared}}}, with noise.
std::string frame_header(std::vector<uint64_t>* sizes_out) {
  std::string attachments, sizes;
  size_t count = below(5);
  for (size_t i = 0; i < count; ++i) {
    uint64_t size = below(3) == 0 ? below(70000) : below(40);
    sizes_out->push_back(size);
    put_varint(sizes, size);
  }
  put_field(attachments, 2, sizes);
  for (uint64_t i = 0, n = below(3); i < n; ++i) {
    std::string entry;
    put_varint(entry, 1 << 3);
    put_varint(entry, below(6));
    put_field(entry, 2, std::string(below(8), 'v'));
    put_field(attachments, 3, entry);
  }
  std::string message;
  put_field(message, 2, attachments);
  std::string frame;
  put_varint(frame, 1 << 3);
  put_varint(frame, rng());
  put_field(frame, below(2) ? 2 : 3, message);
  return frame;
}

int fuzz_envelopes(int rounds) {
  int refused = 0;
  for (int i = 0; i < rounds; ++i) {
    std::vector<uint64_t> sizes;
    std::string data = i % 3 ? mutate(frame_header(&sizes)) : std::string(below(64), '\0');
    if (i % 3 == 0) for (char& c : data) c = static_cast<char>(rng());
    // A copy of exactly its size on the heap: the sanitizer sees any read past it.
    std::vector<uint8_t> exact(data.begin(), data.end());
    try {
      Envelope envelope = distautograd::native::read_envelope(exact.data(), exact.size());
      (void)envelope.following();
    } catch (const distautograd::native::wire::Malformed&) {
      ++refused;
    }
  }
  return refused;
}

void write_all(int fd, const std::string& data, int pass_fd) {
  size_t at = 0;
  while (at < data.size()) {
    iovec part{const_cast<char*>(data.data() + at), data.size() - at};
    msghdr message{};
    message.msg_iov = &part;
    message.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (pass_fd >= 0 && at == 0) {
      message.msg_control = control;
      message.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&message);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    ssize_t sent = ::sendmsg(fd, &message, MSG_NOSIGNAL);
    if (sent <= 0) return;  // the reader gave up on a hostile stream: fine
    at += static_cast<size_t>(sent);
  }
}

// A stream of frames and hostile bytes; the reader reads until it ends or refuses.
void one_stream(int writer, int reader_fd, bool unix_socket) {
  std::string stream;
  for (uint64_t i = 0, n = 1 + below(30); i < n; ++i) {
    std::vector<uint64_t> sizes;
    std::string header = frame_header(&sizes);
    if (below(8) == 0) header = mutate(header);
    uint32_t length = static_cast<uint32_t>(below(20) == 0 ? rng() : header.size());
    stream.append(reinterpret_cast<const char*>(&length), 4);  // little-endian hosts only
    stream += header;
    for (uint64_t size : sizes) stream += std::string(below(10) == 0 ? below(size + 1) : size, 'a');
  }
  if (below(2)) stream.resize(below(stream.size() + 1));
  int passed = unix_socket && below(2) ? ::dup(0) : -1;
  std::thread write([&] {
    write_all(writer, stream, passed);
    ::shutdown(writer, SHUT_WR);
  });
  FrameReader reader(::dup(reader_fd), unix_socket);  // it owns the descriptor it is given
  try {
    for (;;) {
      Envelope envelope;
      reader.read_header(1 << 20, &envelope);
      uint64_t following = envelope.following();
      if (following > (1 << 20)) {
        reader.skip(following);
        continue;
      }
      for (size_t i = 0; i < envelope.streamed_sizes.size(); ++i) {
        if (envelope.shared.count(static_cast<uint32_t>(i))) continue;
        std::vector<uint8_t> into(envelope.streamed_sizes[i]);
        size_t ready = below(2) ? reader.read_ready(into.data(), into.size()) : 0;  // what is there, then the rest
        reader.read_into(into.data() + ready, into.size() - ready);
      }
      for (int fd : reader.take_fds()) ::close(fd);
    }
  } catch (const std::exception&) {
    // the end of the stream, or a refusal: both expected
  }
  ::shutdown(reader_fd, SHUT_RDWR);
  write.join();
  if (passed >= 0) ::close(passed);
}

// Frames from write_frame, read back by FrameReader: every attachment as it was sent, every
// descriptor received. False when anything differs.
bool written_stream(int writer, int reader_fd, bool unix_socket) {
  struct Sent {
    std::vector<std::string> attachments;
    size_t fds;
  };
  std::vector<Sent> frames(1 + below(8));
  for (Sent& frame : frames) {
    for (uint64_t i = 0, n = below(5); i < n; ++i) {
      frame.attachments.emplace_back(below(4) == 0 ? below(300000) : below(50), static_cast<char>('a' + below(26)));
    }
    frame.fds = unix_socket && below(3) == 0 ? below(150) : 0;
    if (frame.fds && frame.attachments.empty()) frame.attachments.emplace_back(1, 'x');  // they ride on bytes
  }
  std::thread write([&] {
    try {
      for (const Sent& frame : frames) {
        std::string sizes, attachments, message;
        std::vector<distautograd::native::Span> spans;
        for (const std::string& a : frame.attachments) {
          put_varint(sizes, a.size());
          spans.push_back({reinterpret_cast<const uint8_t*>(a.data()), a.size()});
        }
        put_field(attachments, 2, sizes);
        put_field(message, 2, attachments);
        std::vector<int> fds(frame.fds, 0);  // stdin, passed again and again
        distautograd::native::write_frame(writer, distautograd::native::frame_header(rng() | 1, 2 + below(2), message),
                                          spans, fds, -1, [] {});
      }
    } catch (const std::exception& e) {
      std::printf("write failed: %s\n", e.what());
    }
    ::shutdown(writer, SHUT_WR);
  });
  bool same = true;
  FrameReader reader(::dup(reader_fd), unix_socket);
  for (const Sent& frame : frames) {
    Envelope envelope;
    reader.read_header(1 << 20, &envelope);
    same = same && envelope.streamed_sizes.size() == frame.attachments.size();
    for (size_t i = 0; same && i < frame.attachments.size(); ++i) {
      std::string into(envelope.streamed_sizes[i], '\0');
      auto* bytes = reinterpret_cast<uint8_t*>(into.data());
      size_t ready = below(2) ? reader.read_ready(bytes, into.size()) : 0;  // what is there, then the rest
      reader.read_into(bytes + ready, into.size() - ready);
      same = into == frame.attachments[i];
    }
    std::vector<int> fds = reader.take_fds();
    same = same && fds.size() == frame.fds;
    for (int fd : fds) ::close(fd);
    if (!same) break;
  }
  ::shutdown(reader_fd, SHUT_RDWR);
  write.join();
  return same;
}

void tcp_pair(int* a, int* b) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  ::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  ::listen(listener, 1);
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &size);
  *a = ::socket(AF_INET, SOCK_STREAM, 0);
  if (::connect(*a, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) std::abort();
  *b = ::accept(listener, nullptr, nullptr);
  ::close(listener);
}

}  // namespace

int main(int argc, char** argv) {
  auto [seed, rounds] = hostile::start(argc, argv);
  int refused = fuzz_envelopes(rounds);
  for (int i = 0; i < rounds / 100; ++i) {
    int pair[2];
    bool unix_socket = i % 2 == 0;
    if (unix_socket) {
      ::socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
    } else {
      tcp_pair(&pair[0], &pair[1]);
    }
    one_stream(pair[0], pair[1], unix_socket);
    ::close(pair[0]);
    ::close(pair[1]);
    if (unix_socket) {
      ::socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
    } else {
      tcp_pair(&pair[0], &pair[1]);
    }
    bool same = written_stream(pair[0], pair[1], unix_socket);
    ::close(pair[0]);
    ::close(pair[1]);
    if (!same) {
      std::printf("seed %llu: a written frame read back differently\n", static_cast<unsigned long long>(seed));
      return 1;
    }
  }
  std::printf("seed %llu: %d envelopes (%d refused), %d streams, %d written streams read back\n",
              static_cast<unsigned long long>(seed), rounds, refused, rounds / 100, rounds / 100);
  return 0;
}
