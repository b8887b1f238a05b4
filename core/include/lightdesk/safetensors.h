// Memory-mapped, validated safetensors checkpoints (single file or sharded through
// model.safetensors.index.json).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lightdesk {

// U8: packed quantized weights (the quantized expert cache), never a model's weight.
enum class DType { F32, BF16, F16, I64, U8 };

const char* dtype_name(DType t);
std::size_t dtype_size(DType t);
bool is_float_dtype(DType t);  // F32, BF16, F16

struct TensorView {
  std::string name;
  std::string file;  // for error messages
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t bytes = 0;

  std::int64_t numel() const;
  // Converts the tensor to float32 into `out` (numel() floats).
  void to_f32(float* out) const;
};

// `count` values of a float dtype (F32, BF16, F16) at `data` (any alignment) as float32.
void convert_to_f32(const std::byte* data, DType dtype, std::int64_t count, float* out);

// One mapped file. Its tensors stay valid while the object lives.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::string& header_text() const { return header_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  std::uint64_t file_size() const { return size_; }

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  std::uint64_t size_ = 0;
  std::string header_;
  std::map<std::string, TensorView> tensors_;
};

// model.safetensors.index.json: which shard holds each tensor, and the checkpoint's total size.
struct CheckpointIndex {
  std::map<std::string, std::string> weight_map;  // tensor name -> shard file name
  std::optional<std::uint64_t> total_size;         // metadata.total_size: bytes of all tensors
  bool shards_present(const std::filesystem::path& directory) const;
};
CheckpointIndex read_checkpoint_index(const std::filesystem::path& index);

// All tensors of a model directory.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& directory);

  const TensorView* find(const std::string& name) const;
  const std::map<std::string, const TensorView*>& tensors() const { return tensors_; }
  // Digest of the headers and file sizes: changes when any tensor's layout changes.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> tensors_;
};

// Synthetic weights (ModelOptions::synthetic_weights): uniform values in [low, high) from a
// counter-based generator, element i = low + (high - low) * (splitmix64(seed ^ splitmix64(i)) >> 40)
// / 2^24, which cuda::fill_uniform draws on the device and fill_synthetic on the host alike.
constexpr std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
struct SyntheticFill {
  std::uint64_t seed = 0;
  float low = 0.0f, high = 0.0f;
};
// Elements first_element .. first_element + numel - 1 of the weight into `out` (a part of it).
void fill_synthetic(const SyntheticFill& fill, float* out, std::int64_t numel, std::int64_t first_element = 0);

// A float32 matrix or vector: points into the mapped file when the checkpoint stores aligned
// F32, else owns a converted copy (or synthetic values).
class WeightTensor {
 public:
  WeightTensor() = default;
  WeightTensor(const TensorView& view, std::int64_t offset_elements, std::int64_t numel);
  WeightTensor(const SyntheticFill& fill, std::int64_t numel);
  const float* data() const { return data_; }
  std::int64_t numel() const { return numel_; }

 private:
  std::vector<float> owned_;
  const float* data_ = nullptr;
  std::int64_t numel_ = 0;
};

// Reads a whole safetensors file written by write_safetensors or by Python (tests, references).
struct LoadedTensor {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<float> f32;         // float tensors converted
  std::vector<std::int64_t> i64;  // I64 tensors
};
std::map<std::string, LoadedTensor> read_safetensors(const std::filesystem::path& path);

}  // namespace lightdesk
