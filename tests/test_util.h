// Helpers shared by the test suites: fixture paths, golden references, scratch directories and
// a raw safetensors writer for building damaged or converted checkpoints.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/safetensors.h"

namespace lightdesk::test {

std::filesystem::path data_dir();
std::filesystem::path fixture_dir(const std::string& name);  // tests/data/<name>
const std::vector<std::string>& fixture_names();

// golden.safetensors of a fixture.
std::map<std::string, LoadedTensor> load_golden(const std::string& fixture);
std::vector<TokenId> ids_of(const LoadedTensor& t);
// n token ids below `vocab`, the same for a seed.
std::vector<TokenId> random_ids(std::size_t n, int vocab, unsigned seed);

// A fresh empty directory under the system temp dir, removed when the object dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Copies a fixture's config.json and model.safetensors into `dir`.
void copy_fixture(const std::string& fixture, const std::filesystem::path& dir);

// A tensor as raw bytes of a safetensors dtype ("F32", "BF16", "F16", ...).
struct RawTensor {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};
void write_raw_safetensors(const std::filesystem::path& path, const std::map<std::string, RawTensor>& tensors);
// All tensors of a safetensors file as float32 RawTensors.
std::map<std::string, RawTensor> read_as_f32(const std::filesystem::path& path);

std::string read_file(const std::filesystem::path& path);
void write_file(const std::filesystem::path& path, const std::string& text);

// Largest |a - b| over two equal-length arrays (infinite if either holds a NaN).
double max_abs_diff(std::span<const float> a, std::span<const float> b);
// Norm-wise relative error: max |a - b| / max |b|. Element-wise ratios would blow up where sums
// cancel to near zero; this measures the error against the size of the result.
double max_rel_diff(std::span<const float> a, std::span<const float> b);

// A state part's values as float32, whichever dtype it carries (bf16 widened exactly).
std::vector<float> state_values(const StatePart& part);

// A generator with a fresh seed per test, reported on failure.
class Random {
 public:
  Random() : seed_(std::random_device{}()), engine_(seed_) {}
  unsigned seed() const { return seed_; }
  std::vector<float> uniform(std::size_t count, float low, float high) {
    std::uniform_real_distribution<float> dist(low, high);
    std::vector<float> v(count);
    for (float& x : v) x = dist(engine_);
    return v;
  }
  std::vector<std::int32_t> integers(std::size_t count, std::int32_t low, std::int32_t high) {
    std::uniform_int_distribution<std::int32_t> dist(low, high);
    std::vector<std::int32_t> v(count);
    for (auto& x : v) x = dist(engine_);
    return v;
  }

 private:
  unsigned seed_;
  std::mt19937 engine_;
};

// ‖out − ref‖ / ‖ref‖ in float64; infinity if any element of out is not finite or the sizes differ.
double relative_error(const std::vector<float>& out, const std::vector<float>& ref);

}  // namespace lightdesk::test
