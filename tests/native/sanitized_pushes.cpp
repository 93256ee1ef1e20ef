// The compiled push reader's hostile-input test, built with AddressSanitizer and UBSan by
// test_sanitized.py: frames carrying random pushes in the common case (ids and ranks up to their
// types' limits, plans, parts done, gradient lists) read back exactly; then those frames mutated at
// random through read_push, which must never throw. Any read outside a buffer, overflow or other
// undefined behaviour aborts the run.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "hostile.h"
#include "push_reading.h"
#include "random_lists.h"
#include "tensor_list.h"
#include "wire.h"

using distautograd::native::PushRead;
using distautograd::native::wire::Writer;

namespace {

using hostile::below;
using hostile::mutate;
using hostile::rng;

uint64_t any_id() { return below(2) ? rng() : below(5); }

// A push of random fields, and the Frame that carries it as a peer writes it.
std::string random_frame(PushRead* push) {
  push->context_id = any_id();
  push->pass_id = any_id();
  push->root = static_cast<uint32_t>(any_id());
  distautograd::native::TensorList list = random_lists::random_list();
  for (size_t i = 0; i < list.size(); ++i) push->message_ids.push_back(any_id());
  for (uint64_t i = 0, n = below(3); i < n; ++i) {
    push->done.emplace_back(static_cast<uint32_t>(any_id()), static_cast<uint32_t>(any_id()));
  }
  if (below(2)) {
    std::string plan;
    Writer writer(plan);
    writer.varint_field(1, below(4));
    writer.packed_field(2, push->message_ids.data(), push->message_ids.size());
    writer.varint_field(5, below(3));
    push->plan = plan;
  }
  push->gradients = distautograd::native::write_tensor_list(list);
  std::string body;
  Writer writer(body);
  writer.varint_field(1, push->context_id);
  writer.varint_field(2, push->pass_id);
  if (push->plan) writer.bytes_field(3, *push->plan);
  writer.packed_field(4, push->message_ids.data(), push->message_ids.size());
  writer.bytes_field(5, push->gradients);
  writer.varint_field(6, push->root);
  for (const auto& [rank, leaves] : push->done) {
    std::string entry;
    Writer done(entry);
    done.varint_field(1, rank);
    done.varint_field(2, leaves);
    writer.bytes_field(7, entry);
  }
  std::string attachments, request, frame;
  std::vector<uint64_t> sizes;
  for (uint64_t i = 0, n = below(3); i < n; ++i) sizes.push_back(below(1 << 20));
  Writer(attachments).packed_field(2, sizes.data(), sizes.size());
  Writer into_request(request);
  if (!attachments.empty()) into_request.bytes_field(2, attachments);
  into_request.bytes_field(33, body);
  Writer(frame).bytes_field(2, request);
  return frame;
}

bool equal(const PushRead& a, const PushRead& b) {
  return a.context_id == b.context_id && a.pass_id == b.pass_id && a.root == b.root && a.message_ids == b.message_ids &&
         a.done == b.done && a.plan == b.plan && a.gradients == b.gradients;
}

}  // namespace

int main(int argc, char** argv) {
  auto [seed, rounds] = hostile::start(argc, argv);
  int taken = 0;
  for (int i = 0; i < rounds; ++i) {
    PushRead push;
    std::string frame = random_frame(&push);
    auto back = distautograd::native::read_push(reinterpret_cast<const uint8_t*>(frame.data()), frame.size());
    if (!back || !equal(*back, push)) {
      std::printf("seed %llu: a written push did not read back\n", static_cast<unsigned long long>(seed));
      return 1;
    }
    std::string hostile = mutate(frame);
    bool read = distautograd::native::read_push(reinterpret_cast<const uint8_t*>(hostile.data()), hostile.size())
                    .has_value();
    taken += read && hostile != frame;  // only frames the mutation changed count
  }
  std::printf("seed %llu: %d pushes written and read back, %d hostile frames (%d changed ones taken)\n",
              static_cast<unsigned long long>(seed), rounds, rounds, taken);
  return 0;
}
