// bfloat16 on the host: the storage type of GPU activations and weights in
// mixed precision, and of bf16 safetensors exports.
#pragma once

#include <cstdint>
#include <cstring>

namespace deco {

// bfloat16 from float32 by round to nearest, ties to even (what PyTorch's
// .to(torch.bfloat16) and the CUDA intrinsics do); a NaN stays a NaN (quiet,
// sign kept) instead of rounding its payload into Inf.
inline uint16_t float_to_bf16_bits(float value) {
  uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  // A NaN whose payload sits only in the low 16 bits would truncate to Inf;
  // setting the top mantissa bit keeps it a (quiet) NaN.
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // Adding 0x7fff rounds up exactly the values above the halfway point; the
  // extra 1 when the kept part is odd sends ties to the even neighbour.
  // Overflow past the largest finite value carries into the exponent: Inf.
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Exact.
inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The float32 value bfloat16 storage gives back for `value`.
inline float round_to_bf16(float value) { return bf16_bits_to_float(float_to_bf16_bits(value)); }

}  // namespace deco
