// Writing tensors to a safetensors file (logits and feature dumps).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace lightdesk {

struct OutputTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::span<const float> f32;            // one of these two is set
  std::span<const std::int64_t> i64;
};
void write_safetensors(const std::filesystem::path& path, const std::vector<OutputTensor>& tensors);

}  // namespace lightdesk
