#include "expert_cache.h"

#include <xxhash.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "lightdesk/replacing_file.h"
#include "lightdesk/safetensors.h"

namespace lightdesk {
namespace {

constexpr const char* kKind = "lightdesk quantized experts";
// Changes with the file's layout or what it records; a file of another version is rebuilt.
constexpr const char* kVersion = "1";

// One tensor of the file: where its bytes come from in a QuantizedMatrix.
struct Entry {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t bytes;
};

// The tensors of one matrix block ("layers.L.gate_up"), in file order.
std::vector<Entry> matrix_entries(const std::string& prefix, const QuantLayout& layout) {
  std::vector<Entry> entries;
  entries.push_back({prefix + ".packed", DType::U8, {layout.rows, layout.row_stride()}, std::uint64_t(layout.packed_bytes())});
  if (layout.dtype == ExpertDType::Int8) {
    entries.push_back({prefix + ".scales", DType::F32, {layout.rows}, std::uint64_t(layout.scale_bytes())});
  } else {
    entries.push_back({prefix + ".scales", DType::F16, {layout.rows, layout.groups()}, std::uint64_t(layout.scale_bytes())});
    entries.push_back({prefix + ".offsets", DType::F16, {layout.rows, layout.groups()}, std::uint64_t(layout.offset_bytes())});
  }
  return entries;
}

QuantLayout gate_up_layout(const ExpertCacheKey& k) { return {k.dtype, std::int64_t{k.experts} * 2 * k.width, k.hidden}; }
QuantLayout down_layout(const ExpertCacheKey& k) { return {k.dtype, std::int64_t{k.experts} * k.hidden, k.width}; }
std::string layer_prefix(int l) { return "layers." + std::to_string(l) + "."; }

// Every tensor of the file of `key`, in file order.
std::vector<Entry> file_entries(const ExpertCacheKey& key) {
  std::vector<Entry> entries;
  for (int l = 0; l < key.layers; ++l)
    for (auto&& [part, layout] : {std::pair{"gate_up", gate_up_layout(key)}, std::pair{"down", down_layout(key)}})
      for (Entry& e : matrix_entries(layer_prefix(l) + part, layout)) entries.push_back(std::move(e));
  return entries;
}

// The bytes of a matrix's tensors, in matrix_entries' order.
std::vector<std::pair<const void*, std::size_t>> matrix_bytes(const QuantizedMatrix& m) {
  std::vector<std::pair<const void*, std::size_t>> parts = {{m.packed().data(), m.packed().size()}};
  if (m.layout().dtype == ExpertDType::Int8) {
    parts.emplace_back(m.row_scales().data(), m.row_scales().size() * sizeof(float));
  } else {
    parts.emplace_back(m.group_scales().data(), m.group_scales().size() * 2);
    parts.emplace_back(m.group_offsets().data(), m.group_offsets().size() * 2);
  }
  return parts;
}
std::vector<std::pair<void*, std::size_t>> matrix_bytes(QuantizedMatrix& m) {
  std::vector<std::pair<void*, std::size_t>> parts;
  for (auto [data, size] : matrix_bytes(static_cast<const QuantizedMatrix&>(m)))
    parts.emplace_back(const_cast<void*>(data), size);
  return parts;
}

std::string checksum_hex(const void* data, std::size_t size) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(XXH3_64bits(data, size)));
  return text;
}

std::map<std::string, std::string> key_metadata(const ExpertCacheKey& key) {
  std::string format = expert_dtype_name(key.dtype);
  if (key.dtype == ExpertDType::Int4) format += std::string("-") + int4_variant_name(key.variant);
  return {{"kind", kKind},
          {"version", kVersion},
          {"fingerprint", key.fingerprint},
          {"format", format},
          {"geometry", std::to_string(key.layers) + " layers, " + std::to_string(key.experts) + " experts, hidden " +
                           std::to_string(key.hidden) + ", width " + std::to_string(key.width)}};
}

// The header: the tensors at consecutive offsets, and the metadata with a checksum per tensor
// (fixed width, so the header keeps its length when they are filled in).
std::string header_text(const ExpertCacheKey& key, const std::vector<Entry>& entries,
                        const std::map<std::string, std::string>& checksums) {
  nlohmann::json header = nlohmann::json::object();
  nlohmann::json metadata = key_metadata(key);
  std::uint64_t offset = 0;
  for (const Entry& e : entries) {
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes}}};
    offset += e.bytes;
    const auto found = checksums.find(e.name);
    metadata["xxh3." + e.name] = found == checksums.end() ? std::string(16, '0') : found->second;
  }
  header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

std::filesystem::path expert_cache_file(const std::filesystem::path& directory, const ExpertCacheKey& key) {
  return directory / ("experts-" + key_metadata(key).at("format") + ".safetensors");
}

// ---------------------------------------------------------------------------------------------

struct ExpertCacheReader::Impl {
  ExpertCacheKey key;
  std::unique_ptr<SafetensorsFile> file;
  std::map<std::string, std::string> checksums;
  std::uint64_t data_bytes = 0;

  [[noreturn]] void refuse(const std::string& why) const {
    throw ExpertCacheRefused(file->path().string() + ": " + why);
  }
};

ExpertCacheReader::ExpertCacheReader(const std::filesystem::path& path, const ExpertCacheKey& key)
    : impl_(std::make_unique<Impl>()) {
  impl_->key = key;
  try {
    impl_->file = std::make_unique<SafetensorsFile>(path);
  } catch (const Error& e) {
    throw ExpertCacheRefused(e.what());
  }
  const nlohmann::json header = nlohmann::json::parse(impl_->file->header_text(), nullptr, false);
  if (!header.is_object() || !header.contains("__metadata__") || !header["__metadata__"].is_object())
    impl_->refuse("no metadata: not a quantized expert cache");
  const nlohmann::json& metadata = header["__metadata__"];
  auto text = [&](const std::string& name) {
    return metadata.contains(name) && metadata[name].is_string() ? metadata[name].get<std::string>() : std::string();
  };
  for (const auto& [name, expected] : key_metadata(key))
    if (text(name) != expected)
      impl_->refuse("made for " + name + " \"" + text(name) + "\", this load needs \"" + expected + "\"");
  const auto& tensors = impl_->file->tensors();
  const std::vector<Entry> entries = file_entries(key);
  if (tensors.size() != entries.size())
    impl_->refuse("holds " + std::to_string(tensors.size()) + " tensors, the model's experts are " +
                  std::to_string(entries.size()));
  for (const Entry& e : entries) {
    const auto t = tensors.find(e.name);
    if (t == tensors.end()) impl_->refuse("no tensor \"" + e.name + "\"");
    if (t->second.dtype != e.dtype || t->second.shape != e.shape) impl_->refuse("tensor \"" + e.name + "\" has another shape");
    const std::string checksum = text("xxh3." + e.name);
    if (checksum.size() != 16) impl_->refuse("no checksum for \"" + e.name + "\"");
    impl_->checksums[e.name] = checksum;
    impl_->data_bytes += e.bytes;
  }
}

ExpertCacheReader::~ExpertCacheReader() = default;

std::uint64_t ExpertCacheReader::data_bytes() const { return impl_->data_bytes; }

QuantizedLayerExperts ExpertCacheReader::layer(int l) const {
  const ExpertCacheKey& key = impl_->key;
  QuantizedLayerExperts experts{QuantizedMatrix(gate_up_layout(key)), QuantizedMatrix(down_layout(key))};
  for (auto&& [part, matrix] : {std::pair<const char*, QuantizedMatrix*>{"gate_up", &experts.gate_up},
                                std::pair<const char*, QuantizedMatrix*>{"down", &experts.down}}) {
    const std::vector<Entry> entries = matrix_entries(layer_prefix(l) + part, matrix->layout());
    const auto targets = matrix_bytes(*matrix);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const TensorView& t = impl_->file->tensors().at(entries[i].name);
      if (checksum_hex(t.data, t.bytes) != impl_->checksums.at(entries[i].name))
        impl_->refuse("tensor \"" + entries[i].name + "\" is damaged (checksum mismatch)");
      std::memcpy(targets[i].first, t.data, targets[i].second);
    }
  }
  return experts;
}

// ---------------------------------------------------------------------------------------------

struct ExpertCacheWriter::Impl {
  ExpertCacheKey key;
  std::unique_ptr<ReplacingFile> file;
  std::vector<Entry> entries;
  std::map<std::string, std::string> checksums;
  std::size_t header_bytes = 0;
  int next_layer = 0;

  // At the file's start: first with zero checksums to reserve its room, at the end over it.
  void write_header() const {
    const std::string text = header_text(key, entries, checksums);
    if (text.size() != header_bytes && header_bytes != 0) throw Error("internal: the cache header changed length");
    const std::uint64_t length = text.size();
    file->write_at(0, &length, 8);
    file->write_at(8, text.data(), text.size());
  }
};

ExpertCacheWriter::ExpertCacheWriter(const std::filesystem::path& file, const ExpertCacheKey& key)
    : impl_(std::make_unique<Impl>()) {
  impl_->key = key;
  impl_->entries = file_entries(key);
  std::error_code error;
  std::filesystem::create_directories(file.parent_path(), error);
  if (error) throw Error(file.parent_path().string() + ": cannot create the cache folder: " + error.message());
  impl_->file = std::make_unique<ReplacingFile>(file);
  impl_->header_bytes = header_text(key, impl_->entries, {}).size();
  impl_->write_header();
}

ExpertCacheWriter::~ExpertCacheWriter() = default;

void ExpertCacheWriter::add(int layer, const QuantizedLayerExperts& experts) {
  if (layer != impl_->next_layer) throw Error("internal: cache layers out of order");
  for (auto&& [part, matrix] : {std::pair<const char*, const QuantizedMatrix*>{"gate_up", &experts.gate_up},
                                std::pair<const char*, const QuantizedMatrix*>{"down", &experts.down}}) {
    const std::vector<Entry> entries = matrix_entries(layer_prefix(layer) + part, matrix->layout());
    const auto sources = matrix_bytes(*matrix);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      impl_->checksums[entries[i].name] = checksum_hex(sources[i].first, sources[i].second);
      impl_->file->append(sources[i].first, sources[i].second);
    }
  }
  ++impl_->next_layer;
}

void ExpertCacheWriter::finish() {
  if (impl_->next_layer != impl_->key.layers) throw Error("internal: the cache file is missing layers");
  impl_->write_header();
  impl_->file->commit();
}

}  // namespace lightdesk
