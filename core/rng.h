// Deterministic random numbers. Everything random in deco (initialization,
// the synthetic corpus) draws from streams keyed by (seed, a name or an
// index), never from one global stream, so a parameter's initial values do
// not depend on which other parameters exist, on the parallel layout, or on
// the order things are built in.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string_view>

namespace deco {

// SplitMix64 finalizer: a good bijective mixer for building stream keys.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Key of the stream for a named object under a run seed (FNV-1a of the name).
inline uint64_t stream_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return mix64(seed ^ mix64(h));
}

inline uint64_t stream_key(uint64_t seed, uint64_t index) { return mix64(seed ^ mix64(index + 1)); }

// mt19937_64 is specified bit-for-bit by the C++ standard, so streams are the
// same with every compiler; the distributions below are written out here
// because std::normal_distribution is not.
class Rng {
 public:
  explicit Rng(uint64_t key) : engine_(key) {}
  uint64_t next_u64() { return engine_(); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>(uniform() * static_cast<double>(n)); }
  // Standard normal by Box-Muller (one value per call; the pair's twin is dropped for simplicity).
  double normal() {
    double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
    double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
  }

 private:
  std::mt19937_64 engine_;
};

}  // namespace deco
