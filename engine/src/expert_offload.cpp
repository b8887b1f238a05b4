#include "expert_offload.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace lightdesk {
namespace {

std::size_t aligned(std::size_t bytes) {
  return (bytes + ExpertBytes::kAlignment - 1) / ExpertBytes::kAlignment * ExpertBytes::kAlignment;
}

// Where a quantized matrix's pieces are, from the start of its bytes.
struct QuantPieces {
  std::size_t packed = 0, scales = 0, offsets = 0, end = 0;
};
QuantPieces pieces(const QuantLayout& layout, std::size_t start) {
  QuantPieces p;
  p.packed = start;
  p.scales = aligned(p.packed + static_cast<std::size_t>(layout.packed_bytes()));
  p.offsets = aligned(p.scales + static_cast<std::size_t>(layout.scale_bytes()));
  p.end = aligned(p.offsets + static_cast<std::size_t>(layout.offset_bytes()));
  return p;
}

QuantizedView view_at(const QuantLayout& layout, const QuantPieces& p, const std::byte* expert) {
  QuantizedView v;
  v.layout = layout;
  v.packed = reinterpret_cast<const std::uint8_t*>(expert + p.packed);
  if (layout.dtype == ExpertDType::Int8) {
    v.row_scales = reinterpret_cast<const float*>(expert + p.scales);
  } else {
    v.group_scales = reinterpret_cast<const std::uint16_t*>(expert + p.scales);
    v.group_offsets = reinterpret_cast<const std::uint16_t*>(expert + p.offsets);
  }
  return v;
}

void write_view(const QuantizedView& from, const QuantPieces& p, std::byte* expert) {
  const QuantLayout& l = from.layout;
  std::memcpy(expert + p.packed, from.packed, static_cast<std::size_t>(l.packed_bytes()));
  if (l.dtype == ExpertDType::Int8) {
    std::memcpy(expert + p.scales, from.row_scales, static_cast<std::size_t>(l.scale_bytes()));
  } else {
    std::memcpy(expert + p.scales, from.group_scales, static_cast<std::size_t>(l.scale_bytes()));
    std::memcpy(expert + p.offsets, from.group_offsets, static_cast<std::size_t>(l.offset_bytes()));
  }
}

}  // namespace

std::size_t ExpertBytes::bytes() const {
  if (dtype == ExpertDType::BF16) return aligned(3 * matrix_bytes());
  return pieces(down_layout(), pieces(gate_up_layout(), 0).end).end;
}

void ExpertBytes::write_matrices(const void* w1, const void* w3, const void* w2, std::byte* expert) const {
  std::memcpy(expert, w1, matrix_bytes());
  std::memcpy(expert + matrix_bytes(), w3, matrix_bytes());
  std::memcpy(expert + 2 * matrix_bytes(), w2, matrix_bytes());
}

QuantizedExpertTensors ExpertBytes::quantized(const std::byte* expert) const {
  const QuantPieces gate_up = pieces(gate_up_layout(), 0), down = pieces(down_layout(), gate_up.end);
  return {view_at(gate_up_layout(), gate_up, expert), view_at(down_layout(), down, expert)};
}

void ExpertBytes::write_quantized(const QuantizedExpertTensors& from, std::byte* expert) const {
  if (from.gate_up.layout.rows != 2 * width || from.gate_up.layout.cols != hidden || from.down.layout.rows != hidden ||
      from.down.layout.cols != width || from.gate_up.layout.dtype != dtype || from.down.layout.dtype != dtype)
    throw Error("internal: a quantized expert of another shape or format than the store's");
  const QuantPieces gate_up = pieces(gate_up_layout(), 0);
  write_view(from.gate_up, gate_up, expert);
  write_view(from.down, pieces(down_layout(), gate_up.end), expert);
}

HostExpertStore::HostExpertStore(int layers, int experts, const ExpertBytes& layout)
    : layers_(layers), experts_(experts), layout_(layout),
      bytes_(std::make_unique_for_overwrite<std::byte[]>(static_cast<std::size_t>(bytes()))) {}

std::byte* HostExpertStore::expert(int layer, int expert) {
  return bytes_.get() + (static_cast<std::size_t>(layer) * static_cast<std::size_t>(experts_) +
                         static_cast<std::size_t>(expert)) * layout_.bytes();
}
const std::byte* HostExpertStore::expert(int layer, int expert) const {
  return const_cast<HostExpertStore*>(this)->expert(layer, expert);
}

ExpertSlotCache::ExpertSlotCache(int layers, int experts, int slots)
    : layers_(layers), experts_(experts), slots_(slots),
      expert_of_slot_(static_cast<std::size_t>(layers) * static_cast<std::size_t>(slots), -1),
      slot_of_expert_(static_cast<std::size_t>(layers) * static_cast<std::size_t>(experts), -1),
      last_use_(expert_of_slot_.size(), 0), resident_at_step_(slot_of_expert_.size(), 0) {}

void ExpertSlotCache::begin_step(int layer) {
  for (int e = 0; e < experts_; ++e)
    resident_at_step_[at(layer, e, experts_)] = slot_of_expert_[at(layer, e, experts_)] >= 0 ? 1 : 0;
}

// A free slot, else the least recently used one whose expert is not in `keep`.
int ExpertSlotCache::victim(int layer, std::span<const int> keep) const {
  int best = -1;
  for (int s = 0; s < slots_; ++s) {
    const int held = expert_of_slot_[at(layer, s, slots_)];
    if (held < 0) return s;
    if (std::ranges::find(keep, held) != keep.end()) continue;
    if (best < 0 || last_use_[at(layer, s, slots_)] < last_use_[at(layer, best, slots_)]) best = s;
  }
  if (best < 0) throw Error("internal: no expert slot to evict");
  return best;
}

void ExpertSlotCache::assign(int layer, int slot, int expert) {
  int& held = expert_of_slot_[at(layer, slot, slots_)];
  if (held >= 0) slot_of_expert_[at(layer, held, experts_)] = -1;
  held = expert;
  slot_of_expert_[at(layer, expert, experts_)] = slot;
  ++copies_;
}

ExpertSlotCache::Placement ExpertSlotCache::place(int layer, int expert) {
  Placement p{slot_of(layer, expert), false};
  if (p.slot < 0) {
    const int current[] = {expert};
    p = {victim(layer, current), true};
    assign(layer, p.slot, expert);
  }
  last_use_[at(layer, p.slot, slots_)] = ++clock_;
  return p;
}

std::vector<std::pair<int, ExpertSlotCache::Placement>> ExpertSlotCache::seed(int layer, std::span<const int> experts) {
  if (static_cast<int>(experts.size()) > slots_)
    throw Error("internal: seeding " + std::to_string(experts.size()) + " experts into " + std::to_string(slots_) +
                " slots");
  std::vector<std::pair<int, Placement>> copies;
  for (const int e : experts) {
    if (slot_of(layer, e) >= 0) continue;
    const Placement p{victim(layer, experts), true};
    assign(layer, p.slot, e);
    last_use_[at(layer, p.slot, slots_)] = ++clock_;
    copies.emplace_back(e, p);
  }
  return copies;
}

bool ExpertSlotCache::resident_before_step(int layer, int expert) const {
  return resident_at_step_[at(layer, expert, experts_)] != 0;
}

int ExpertSlotCache::slot_of(int layer, int expert) const { return slot_of_expert_[at(layer, expert, experts_)]; }

ExpertOffload::ExpertOffload(int layers, int experts, int slots, const ExpertBytes& layout)
    : layers_(layers), store_(layers, experts, layout), cache_(layers, experts, slots),
      slots_(std::make_unique_for_overwrite<std::byte[]>(static_cast<std::size_t>(slot_bytes()))) {
  std::memset(slots_.get(), 0xff, static_cast<std::size_t>(slot_bytes()));
}

std::byte* ExpertOffload::slot(int layer, int slot) {
  return slots_.get() + (static_cast<std::size_t>(layer) * static_cast<std::size_t>(cache_.slots()) +
                         static_cast<std::size_t>(slot)) * store_.layout().bytes();
}

const std::byte* ExpertOffload::bring_in(int layer, int expert) {
  const ExpertSlotCache::Placement p = cache_.place(layer, expert);
  std::byte* to = slot(layer, p.slot);
  if (p.copy_in) std::memcpy(to, store_.expert(layer, expert), store_.layout().bytes());
  return to;
}

void ExpertOffload::seed(const ExpertSelection& experts) {
  if (!experts.pruned()) return;
  if (static_cast<int>(experts.kept.size()) != layers_)
    throw Error("expert cache seed: " + std::to_string(experts.kept.size()) + " layers for a model of " +
                std::to_string(layers_));
  for (int l = 0; l < layers_; ++l) {
    const std::vector<int>& kept = experts.kept[static_cast<std::size_t>(l)];
    // A seed larger than the cache keeps the ones listed first.
    const std::span<const int> fitting(kept.data(), std::min(kept.size(), static_cast<std::size_t>(cache_.slots())));
    for (const int e : fitting)
      if (e < 0 || e >= store_.experts())
        throw Error("expert cache seed: expert " + std::to_string(e) + " of layer " + std::to_string(l) +
                    " is outside the model's " + std::to_string(store_.experts()));
    for (const auto& [e, p] : cache_.seed(l, fitting))
      std::memcpy(slot(l, p.slot), store_.expert(l, e), store_.layout().bytes());
  }
}

void check_expert_offload(const ModelConfig& c, const ModelOptions& options) {
  const int cached = options.cached_experts_per_layer;
  if (!options.host_expert_store) {
    if (cached != 0)
      throw Error("cached_experts_per_layer " + std::to_string(cached) + " needs the host expert store");
    return;
  }
  if (cached < c.experts_per_token)
    throw Error("a cache of " + std::to_string(cached) + " experts per layer is smaller than the " +
                std::to_string(c.experts_per_token) + " experts a token routes to");
  if (cached > c.num_experts)
    throw Error("a cache of " + std::to_string(cached) + " experts per layer exceeds the model's " +
                std::to_string(c.num_experts) + " experts per layer");
  if (options.experts.pruned())
    throw Error("the host expert store holds every expert: it does not run with pruned experts");
  if (options.tensor_parallel > 1)
    throw Error("the host expert store runs on one rank for now (tensor_parallel " +
                std::to_string(options.tensor_parallel) + ")");
}

}  // namespace lightdesk
