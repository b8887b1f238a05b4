// bfloat16 on the host: the top half of a float32's bits.
#pragma once

#include <bit>
#include <cstdint>

namespace lightdesk {

inline float bf16_to_f32(std::uint16_t v) { return std::bit_cast<float>(static_cast<std::uint32_t>(v) << 16); }

// Rounded to nearest, ties to even, as the GPU converts; NaN stays NaN.
inline std::uint16_t f32_to_bf16(float f) {
  const auto bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40);
  return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace lightdesk
