// What the sanitized harnesses share: how a run starts, one seeded random source, and bytes mutated as
// a peer (or a broken network) might change them -- a byte changed, the end cut, junk or runs of 0xff
// inserted.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace hostile {

inline std::mt19937_64 rng;

inline uint64_t below(uint64_t n) { return n ? rng() % n : 0; }

// A harness's run as test_sanitized.py starts it (`harness SEED ROUNDS`), the random source seeded.
struct Run {
  uint64_t seed;
  int rounds;
};

inline Run start(int argc, char** argv) {
  Run run{argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1, argc > 2 ? std::atoi(argv[2]) : 20000};
  rng.seed(run.seed);
  return run;
}

inline std::string mutate(std::string data) {
  for (uint64_t i = 0, n = below(4); i < n && !data.empty(); ++i) {
    switch (below(4)) {
      case 0: data[below(data.size())] = static_cast<char>(rng()); break;
      case 1: data.resize(below(data.size())); break;
      case 2: data.insert(below(data.size() + 1), std::string(1 + below(5), static_cast<char>(rng()))); break;
      default: data.insert(below(data.size() + 1), std::string(1 + below(11), '\xff'));
    }
  }
  return data;
}

}  // namespace hostile
