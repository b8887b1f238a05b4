// The quantized experts kept on disk (ModelOptions::expert_cache): one safetensors file per
// model and format in the model's cache folder, written once while a load quantizes, read by
// the later loads instead of quantizing. The file's metadata names what it holds (the model's
// fingerprint, the format, the geometry) and an XXH3 checksum of every tensor: a file made for
// anything else, cut short or with a changed byte is refused, never used, and the caller
// rebuilds it. A file is written under a temporary name and renamed when complete, so a load
// that stops half way leaves no file that looks whole.
//
// Per layer L: layers.L.gate_up.{packed,scales,offsets} holds [experts · 2 · width, hidden]
// (expert e's w1 rows, then its w3 rows, at e · 2 · width), layers.L.down.* holds
// [experts · hidden, width]; packed U8 [rows, row stride], scales F32 [rows] (int8) or F16
// [rows, groups] (int4), offsets F16 [rows, groups] (int4 only): expert_quant.h's layout as is.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "lightdesk/error.h"
#include "lightdesk/expert_quant.h"

namespace lightdesk {

// A layer's experts quantized, all experts in one block per matrix (see above).
struct QuantizedLayerExperts {
  QuantizedMatrix gate_up;  // [experts · 2 · width, hidden]
  QuantizedMatrix down;     // [experts · hidden, width]
};

// What a cache file must hold to serve a load.
struct ExpertCacheKey {
  std::string fingerprint;  // the model's (ModelInfo::fingerprint)
  ExpertDType dtype = ExpertDType::Int8;
  Int4Variant variant = Int4Variant::Asymmetric;  // int4 only
  int layers = 0, experts = 0;
  std::int64_t hidden = 0, width = 0;
};

// The file of `key` in `directory`: experts-int8.safetensors, experts-int4-asym.safetensors, ...
std::filesystem::path expert_cache_file(const std::filesystem::path& directory, const ExpertCacheKey& key);

// A cache file that cannot serve: its message says why (another model, cut short, damaged).
class ExpertCacheRefused : public Error {
 public:
  using Error::Error;
};

class ExpertCacheReader {
 public:
  // Maps the file and checks its header against `key`; throws ExpertCacheRefused.
  ExpertCacheReader(const std::filesystem::path& file, const ExpertCacheKey& key);
  ~ExpertCacheReader();
  // The bytes of its tensors: what a load reads from it.
  std::uint64_t data_bytes() const;
  // Layer l's experts, copied out of the file after their checksums are verified; throws
  // ExpertCacheRefused on a mismatch.
  QuantizedLayerExperts layer(int l) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class ExpertCacheWriter {
 public:
  // Starts the file of `key` under a temporary name in its folder (created).
  ExpertCacheWriter(const std::filesystem::path& file, const ExpertCacheKey& key);
  // An unfinished file is removed.
  ~ExpertCacheWriter();
  // Layers in order, 0 first.
  void add(int layer, const QuantizedLayerExperts& experts);
  // Writes the checksums and gives the file its name (replacing any older one).
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightdesk
