#include "test_util.h"

#include "lightdesk/bf16.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>

namespace lightdesk::test {

std::filesystem::path data_dir() { return LIGHTDESK_TEST_DATA; }
std::filesystem::path fixture_dir(const std::string& name) { return data_dir() / name; }

const std::vector<std::string>& fixture_names() {
  static const std::vector<std::string> names = {"tiny-a-hf", "tiny-a-m1-rd16", "tiny-a-m1-rd8", "tiny-tp-6h3kv8e"};
  return names;
}

std::map<std::string, LoadedTensor> load_golden(const std::string& fixture) {
  return read_safetensors(fixture_dir(fixture) / "golden.safetensors");
}

std::vector<TokenId> ids_of(const LoadedTensor& t) { return {t.i64.begin(), t.i64.end()}; }

ScratchDir::ScratchDir() {
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("lightdesk-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void copy_fixture(const std::string& fixture, const std::filesystem::path& dir) {
  for (const char* f : {"config.json", "model.safetensors"}) {
    std::filesystem::copy_file(fixture_dir(fixture) / f, dir / f, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::permissions(dir / f, std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
  }
}

void write_raw_safetensors(const std::filesystem::path& path, const std::map<std::string, RawTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const std::uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << text;
  for (const auto& [name, t] : tensors)
    out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
}

std::map<std::string, RawTensor> read_as_f32(const std::filesystem::path& path) {
  std::map<std::string, RawTensor> out;
  for (auto& [name, t] : read_safetensors(path)) {
    RawTensor r{"F32", t.shape, {}};
    r.bytes.resize(t.f32.size() * 4);
    std::memcpy(r.bytes.data(), t.f32.data(), r.bytes.size());
    out.emplace(name, std::move(r));
  }
  return out;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) throw std::runtime_error("max_abs_diff: sizes differ");
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

std::vector<TokenId> random_ids(std::size_t n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<TokenId> dist(0, vocab - 1);
  std::vector<TokenId> ids(n);
  for (auto& id : ids) id = dist(rng);
  return ids;
}

double max_rel_diff(std::span<const float> a, std::span<const float> b) {
  double scale = 0.0;
  for (float v : b) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  return max_abs_diff(a, b) / std::max(scale, 1e-30);
}

std::vector<float> state_values(const StatePart& part) {
  if (part.dtype == StateDType::F32) return {part.f32().begin(), part.f32().end()};
  std::vector<float> values(static_cast<std::size_t>(part.numel()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint16_t half;
    std::memcpy(&half, part.data.data() + 2 * i, 2);
    values[i] = bf16_to_f32(half);
  }
  return values;
}

double relative_error(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    diff += (static_cast<double>(out[i]) - ref[i]) * (static_cast<double>(out[i]) - ref[i]);
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

}  // namespace lightdesk::test
