#include "lightdesk/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "lightdesk/bf16.h"
#include "lightdesk/error.h"
#include "lightdesk/input_files.h"
#include "lightdesk/replacing_file.h"
#include "lightdesk/safetensors_write.h"

namespace lightdesk {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

namespace {

bool parse_dtype(const std::string& s, DType& out) {
  if (s == "F32") out = DType::F32;
  else if (s == "BF16") out = DType::BF16;
  else if (s == "F16") out = DType::F16;
  else if (s == "I64") out = DType::I64;
  else if (s == "U8") out = DType::U8;
  else return false;
  return true;
}

}  // namespace

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

void TensorView::to_f32(float* out) const {
  if (!is_float_dtype(dtype))
    throw Error(file + ": tensor \"" + name + "\" is " + dtype_name(dtype) + ", expected a floating-point tensor");
  convert_to_f32(data, dtype, numel(), out);
}

void convert_to_f32(const std::byte* data, DType dtype, std::int64_t count, float* out) {
  if (count == 0) return;  // `out` may then be null, which memcpy does not allow even for no bytes
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, data, static_cast<std::size_t>(count) * 4);
      break;
    case DType::BF16:
    case DType::F16:
      for (std::int64_t i = 0; i < count; ++i) {
        std::uint16_t v;
        std::memcpy(&v, data + 2 * i, 2);
        out[i] = dtype == DType::BF16 ? bf16_to_f32(v) : f16_to_f32(v);
      }
      break;
    case DType::I64:
    case DType::U8:
      throw Error(std::string("internal: ") + dtype_name(dtype) + " values are not floats");
  }
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
  const std::string where = path.string();
  // No limit on the file itself: its header declares the size, checked against it below.
  const RegularFile file(path, std::numeric_limits<std::uint64_t>::max());
  size_ = file.size();
  if (size_ < 8)
    throw Error(where + ": truncated file (" + std::to_string(size_) + " bytes, no safetensors header)");
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file.fd(), 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(where + ": cannot map: " + std::strerror(errno));
  }
  try {
    const auto* base = static_cast<const std::byte*>(map_);
    std::uint64_t header_len;
    std::memcpy(&header_len, base, 8);
    if (header_len > size_ - 8)
      throw Error(where + ": truncated file: header of " + std::to_string(header_len) + " bytes but only " +
                  std::to_string(size_ - 8) + " bytes follow");
    header_.assign(reinterpret_cast<const char*>(base + 8), header_len);
    check_json_depth(header_, where + ": safetensors header");
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(header_);
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + ": corrupt safetensors header (not JSON): " + plain_error_text(e.what()));
    }
    if (!header.is_object()) throw Error(where + ": corrupt safetensors header (not an object)");
    const std::byte* data = base + 8 + header_len;
    const std::uint64_t data_size = size_ - 8 - header_len;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      const std::string what = where + ": tensor \"" + name + "\": ";
      if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
        throw Error(what + "header entry lacks dtype, shape or data_offsets");
      TensorView t;
      t.name = name;
      t.file = where;
      if (!entry["dtype"].is_string() || !parse_dtype(entry["dtype"].get<std::string>(), t.dtype))
        throw Error(what + "unsupported dtype " + entry["dtype"].dump() + " (supported: F32, BF16, F16, I64, U8)");
      const auto& shape = entry["shape"];
      const auto& offsets = entry["data_offsets"];
      if (!shape.is_array()) throw Error(what + "shape is not a list");
      std::uint64_t numel = 1;
      for (const auto& d : shape) {
        if (!d.is_number_unsigned() || d.get<std::uint64_t>() > (1ULL << 40)) throw Error(what + "bad shape " + shape.dump());
        t.shape.push_back(d.get<std::int64_t>());
        numel *= d.get<std::uint64_t>();
        if (numel > (1ULL << 44)) throw Error(what + "bad shape " + shape.dump());
      }
      if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
        throw Error(what + "data_offsets must be two non-negative integers");
      const std::uint64_t begin = offsets[0].get<std::uint64_t>(), end = offsets[1].get<std::uint64_t>();
      if (begin > end) throw Error(what + "data_offsets are reversed");
      if (end > data_size)
        throw Error(what + "data ends at byte " + std::to_string(end) + " past the end of the data (" +
                    std::to_string(data_size) + " bytes; the file is truncated or the header is corrupt)");
      if (end - begin != numel * dtype_size(t.dtype))
        throw Error(what + "holds " + std::to_string(end - begin) + " bytes but its shape " + shape.dump() + " and dtype " +
                    dtype_name(t.dtype) + " need " + std::to_string(numel * dtype_size(t.dtype)));
      t.data = data + begin;
      t.bytes = end - begin;
      ranges.emplace_back(begin, end);
      tensors_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second && ranges[i].first != ranges[i].second)
        throw Error(where + ": corrupt header: two tensors overlap at byte " + std::to_string(ranges[i].first));
    // The tensors fill the data exactly, as every writer lays them out: a header whose offsets
    // end before the data does is one that a truncation, a wrong edit or a mixed-up shard left
    // (its tensors would be read from the wrong bytes).
    const std::uint64_t declared = ranges.empty() ? 0 : ranges.back().second;
    if (declared != data_size)
      throw Error(where + ": corrupt file: the header's tensors end at byte " + std::to_string(declared) +
                  " of the data but the file holds " + std::to_string(data_size) + " bytes of data");
  } catch (...) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

CheckpointIndex read_checkpoint_index(const std::filesystem::path& index) {
  const std::string text = read_json_file(index);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(index.string() + ": malformed JSON: " + plain_error_text(e.what()));
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(index.string() + ": no \"weight_map\" object");
  CheckpointIndex result;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) throw Error(index.string() + ": weight_map entry for \"" + name + "\" is not a file name");
    const std::string fname = file.get<std::string>();
    if (fname.find('/') != std::string::npos || fname.find("..") != std::string::npos)
      throw Error(index.string() + ": weight_map names a file outside the directory: \"" + fname + "\"");
    result.weight_map.emplace(name, fname);
  }
  if (j.contains("metadata") && j["metadata"].is_object() && j["metadata"].contains("total_size")) {
    const auto& total = j["metadata"]["total_size"];
    if (!total.is_number_unsigned()) throw Error(index.string() + ": metadata.total_size must be a non-negative integer");
    result.total_size = total.get<std::uint64_t>();
  }
  return result;
}

bool CheckpointIndex::shards_present(const std::filesystem::path& directory) const {
  std::set<std::string> files;
  for (const auto& [name, file] : weight_map) files.insert(file);
  return std::all_of(files.begin(), files.end(),
                     [&](const std::string& file) { return std::filesystem::exists(directory / file); });
}

Checkpoint::Checkpoint(const std::filesystem::path& directory) {
  const auto single = directory / "model.safetensors";
  const auto index_path = directory / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    std::map<std::string, SafetensorsFile*> by_file;
    for (const auto& [name, fname] : read_checkpoint_index(index_path).weight_map) {
      auto it = by_file.find(fname);
      if (it == by_file.end()) {
        const auto shard = directory / fname;
        if (!std::filesystem::exists(shard))
          throw Error(index_path.string() + ": shard \"" + fname + "\" (holding \"" + name + "\") is missing");
        files_.push_back(std::make_unique<SafetensorsFile>(shard));
        it = by_file.emplace(fname, files_.back().get()).first;
      }
      auto t = it->second->tensors().find(name);
      if (t == it->second->tensors().end())
        throw Error(it->second->path().string() + ": tensor \"" + name + "\" listed in the index is not in this shard");
      tensors_[name] = &t->second;
    }
  } else if (std::filesystem::exists(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& [name, t] : files_.back()->tensors()) tensors_[name] = &t;
  } else {
    throw Error(directory.string() + ": no model.safetensors or model.safetensors.index.json");
  }
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

std::map<std::string, LoadedTensor> read_safetensors(const std::filesystem::path& path) {
  SafetensorsFile file(path);
  std::map<std::string, LoadedTensor> out;
  for (const auto& [name, t] : file.tensors()) {
    LoadedTensor l{t.dtype, t.shape, {}, {}};
    if (t.dtype == DType::I64) {
      l.i64.resize(static_cast<std::size_t>(t.numel()));
      if (t.bytes > 0) std::memcpy(l.i64.data(), t.data, t.bytes);
    } else {
      l.f32.resize(static_cast<std::size_t>(t.numel()));
      t.to_f32(l.f32.data());
    }
    out.emplace(name, std::move(l));
  }
  return out;
}

WeightTensor::WeightTensor(const TensorView& view, std::int64_t offset_elements, std::int64_t numel) : numel_(numel) {
  const std::byte* start = view.data + offset_elements * static_cast<std::int64_t>(dtype_size(view.dtype));
  if (view.dtype == DType::F32 && reinterpret_cast<std::uintptr_t>(start) % alignof(float) == 0) {
    data_ = reinterpret_cast<const float*>(start);
  } else {
    owned_.resize(static_cast<std::size_t>(numel));
    TensorView part = view;
    part.data = start;
    part.shape = {numel};
    part.bytes = static_cast<std::size_t>(numel) * dtype_size(view.dtype);
    part.to_f32(owned_.data());
    data_ = owned_.data();
  }
  // Every backend loads through here: a NaN or an infinity in a weight would make every logit
  // NaN, and a checkpoint holding one is damaged.
  const float* bad = std::find_if(data_, data_ + numel, [](float v) { return !std::isfinite(v); });
  if (bad != data_ + numel)
    throw Error(view.file + ": tensor \"" + view.name + "\" holds a non-finite value (" + std::to_string(*bad) +
                " at element " + std::to_string(offset_elements + (bad - data_)) + "): the checkpoint is damaged");
}

void write_safetensors(const std::filesystem::path& path, const std::vector<OutputTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    std::int64_t numel = 1;
    for (auto d : t.shape) numel *= d;
    const bool is_i64 = t.i64.data() != nullptr;
    const std::size_t count = is_i64 ? t.i64.size() : t.f32.size();
    if (static_cast<std::int64_t>(count) != numel)
      throw Error(path.string() + ": tensor \"" + t.name + "\" has " + std::to_string(count) +
                  " values for a shape of " + std::to_string(numel));
    const std::uint64_t bytes = count * (is_i64 ? 8 : 4);
    header[t.name] = {{"dtype", is_i64 ? "I64" : "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  replace_regular_file(path, [&](const std::function<void(const void*, std::size_t)>& write_all) {
    const std::uint64_t len = text.size();
    write_all(&len, 8);
    write_all(text.data(), text.size());
    for (const auto& t : tensors) {
      if (t.i64.data() != nullptr)
        write_all(t.i64.data(), t.i64.size_bytes());
      else
        write_all(t.f32.data(), t.f32.size_bytes());
    }
  });
}

void fill_synthetic(const SyntheticFill& fill, float* out, std::int64_t numel, std::int64_t first_element) {
  for (std::int64_t i = 0; i < numel; ++i) {
    const auto element = static_cast<std::uint64_t>(first_element + i);
    const float unit = static_cast<float>(splitmix64(fill.seed ^ splitmix64(element)) >> 40) * 0x1p-24f;
    out[i] = fill.low + (fill.high - fill.low) * unit;
  }
}

WeightTensor::WeightTensor(const SyntheticFill& fill, std::int64_t numel)
    : owned_(static_cast<std::size_t>(numel)), numel_(numel) {
  fill_synthetic(fill, owned_.data(), numel);
  data_ = owned_.data();
}

}  // namespace lightdesk
