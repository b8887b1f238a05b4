// Exact mode's experts (docs/expert-offload.md): every expert in a host store, in the format the
// backend computes with, and per layer a few of them in the backend's slots; the MoE brings a
// chosen expert without a slot in from the store before computing it, so the products are those
// of the all-resident model on the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/expert_quant.h"
#include "model_config.h"
#include "ops.h"

namespace lightdesk {

// Where one expert's matrices are in its bytes (a store's and a slot's are laid out alike).
// Unquantized (ExpertDType::BF16: the backend's weight type, `element_bytes` each): w1, w3, w2.
// Quantized: gate_up [2 · width, hidden] (w1's rows, then w3's) and down [hidden, width], each
// its packed rows, then its scales, then its offsets (expert_quant.h); every piece starts at a
// multiple of kAlignment bytes, as a kernel's vector loads want.
struct ExpertBytes {
  static constexpr std::size_t kAlignment = 64;
  ExpertDType dtype = ExpertDType::BF16;
  std::int64_t hidden = 0, width = 0;
  std::size_t element_bytes = 4;

  std::size_t bytes() const;
  // Unquantized: the matrices at `expert`.
  const std::byte* w1(const std::byte* expert) const { return expert; }
  const std::byte* w3(const std::byte* expert) const { return expert + matrix_bytes(); }
  const std::byte* w2(const std::byte* expert) const { return expert + 2 * matrix_bytes(); }
  void write_matrices(const void* w1, const void* w3, const void* w2, std::byte* expert) const;
  // Quantized: views of the matrices at `expert`, and writing them there.
  QuantizedExpertTensors quantized(const std::byte* expert) const;
  void write_quantized(const QuantizedExpertTensors& from, std::byte* expert) const;

 private:
  std::size_t matrix_bytes() const { return static_cast<std::size_t>(hidden * width) * element_bytes; }
  QuantLayout gate_up_layout() const { return {dtype, 2 * width, hidden}; }
  QuantLayout down_layout() const { return {dtype, hidden, width}; }
};

// Every expert of every layer, `layout.bytes()` each. The memory is committed as it is written
// (a loader fills it layer by layer while it frees what it loaded).
class HostExpertStore {
 public:
  HostExpertStore(int layers, int experts, const ExpertBytes& layout);
  const ExpertBytes& layout() const { return layout_; }
  int experts() const { return experts_; }
  std::byte* expert(int layer, int expert);
  const std::byte* expert(int layer, int expert) const;
  std::uint64_t bytes() const { return static_cast<std::uint64_t>(layers_) * experts_ * layout_.bytes(); }

 private:
  int layers_, experts_;
  ExpertBytes layout_;
  std::unique_ptr<std::byte[]> bytes_;
};

// Which expert each layer's slots hold, and which slot an expert gets: a free one, else the
// least recently used. A step's experts are placed after the experts of earlier steps have
// been used, so an expert of the current step is evicted only when the step needs more experts
// than there are slots (a prefill chunk): then it has been computed already, as the CPU ops
// compute the chosen experts one after another.
class ExpertSlotCache {
 public:
  ExpertSlotCache(int layers, int experts, int slots);
  int slots() const { return slots_; }
  struct Placement {
    int slot = 0;
    bool copy_in = false;  // the slot must be filled from the store
  };
  // Starts a step of `layer`: what has a slot now is what the step's misses are counted against.
  void begin_step(int layer);
  // The slot of `expert` for the current step of `layer`.
  Placement place(int layer, int expert);
  // Puts `experts` (at most slots() of them) in slots, evicting the least recently used others:
  // per expert without a slot the place to fill (a pattern's seeding changes only what is cached).
  std::vector<std::pair<int, Placement>> seed(int layer, std::span<const int> experts);
  // Whether `expert` had a slot when the layer's latest step began (its miss otherwise).
  bool resident_before_step(int layer, int expert) const;
  int slot_of(int layer, int expert) const;  // -1: none
  std::int64_t copies() const { return copies_; }  // slots filled so far (misses and seeding)

 private:
  std::size_t at(int layer, int index, int count) const {
    return static_cast<std::size_t>(layer) * static_cast<std::size_t>(count) + static_cast<std::size_t>(index);
  }
  int victim(int layer, std::span<const int> keep) const;
  void assign(int layer, int slot, int expert);

  int layers_, experts_, slots_;
  std::uint64_t clock_ = 0;
  std::int64_t copies_ = 0;
  std::vector<int> expert_of_slot_;              // [layers, slots], -1 free
  std::vector<int> slot_of_expert_;              // [layers, experts], -1 none
  std::vector<std::uint64_t> last_use_;          // [layers, slots]
  std::vector<std::uint8_t> resident_at_step_;   // [layers, experts]
};

// Exact mode on a backend whose slots are host memory (the CPU backend: the reference the
// copy-in tests compare with). Slots start with every bit set (NaN in float32 and as a quantized
// scale), so reading one that was never filled shows in the logits.
class ExpertOffload {
 public:
  ExpertOffload(int layers, int experts, int slots, const ExpertBytes& layout);
  HostExpertStore& store() { return store_; }
  const HostExpertStore& store() const { return store_; }
  const ExpertSlotCache& cache() const { return cache_; }
  void begin_step(int layer) { cache_.begin_step(layer); }
  // The bytes of `expert` of `layer` in its slot, copied in from the store on a miss.
  const std::byte* bring_in(int layer, int expert);
  // Each layer's experts of `experts` into slots (ExpertPattern::keep of the cache's size); a
  // selection of all experts seeds nothing.
  void seed(const ExpertSelection& experts);
  std::uint64_t slot_bytes() const { return static_cast<std::uint64_t>(layers_) * cache_.slots() * store_.layout().bytes(); }

 private:
  std::byte* slot(int layer, int slot);

  int layers_;
  HostExpertStore store_;
  ExpertSlotCache cache_;
  std::unique_ptr<std::byte[]> slots_;
};

// Checks ModelOptions::host_expert_store and cached_experts_per_layer against the model and the
// other options; throws Error naming the fault.
void check_expert_offload(const ModelConfig& config, const ModelOptions& options);

}  // namespace lightdesk
