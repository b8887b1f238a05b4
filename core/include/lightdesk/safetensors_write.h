// Writing tensors to a safetensors file (logits and feature dumps).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
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
// Writes a file through `write` (called with a function that appends bytes) to a fresh temporary
// file beside `path`, created exclusively, then renames it over `path`, which must be a regular
// file or absent. Throws Error naming the path and the cause.
void replace_regular_file(const std::filesystem::path& path,
                          const std::function<void(const std::function<void(const void*, std::size_t)>&)>& write);

}  // namespace lightdesk
