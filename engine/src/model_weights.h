// The model's weights: where each is in the checkpoint (WeightMap), the one walk over them that
// every backend's loader takes (load_layer_tensors), and the part of each that a tensor-parallel
// rank reads (rank_weight_part, read_weight_part). All matrices are row-major [out, in] like
// torch.nn.Linear, whatever the dtype and tensor naming of the checkpoint.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "expert_cache.h"
#include "lightdesk/expert_quant.h"
#include "lightdesk/safetensors.h"
#include "model_config.h"

namespace lightdesk {

// How a backend keeps a weight: the norms and the router in float32 on every backend, the
// matrices in the backend's weight type.
enum class WeightPrecision { Backend, Float32 };

// The tensors of one decoder layer other than its experts', each of a backend's Tensor type.
template <typename Tensor>
struct LayerTensors {
  LayerKind kind = LayerKind::Lightning;
  Tensor input_norm;      // [hidden]
  Tensor post_attn_norm;  // [hidden]
  // Lightning layers.
  Tensor qkv;          // [3 * heads * head_dim, hidden], per head [q | k | v]
  Tensor output_gate;  // [heads * head_dim, hidden]
  Tensor output_norm;  // [heads * head_dim]
  Tensor out_proj;     // [hidden, heads * head_dim]
  // Softmax layers.
  Tensor q_proj;  // [heads * head_dim, hidden]
  Tensor k_proj;  // [kv_heads * head_dim, hidden]
  Tensor v_proj;  // [kv_heads * head_dim, hidden]
  Tensor o_proj;  // [hidden, heads * head_dim]
  // MoE.
  Tensor router;  // [experts, hidden]
};

// The WeightMap names of layer l's tensors ("layers.L.<part>") and of its expert e's matrices.
std::string layer_weight_prefix(int layer);
struct ExpertWeightNames {
  std::string w1;  // [width, hidden], goes through SiLU
  std::string w3;  // [width, hidden]
  std::string w2;  // [hidden, width]
};
ExpertWeightNames expert_weight_names(int layer, int expert);
// The shape the config gives the tensor of this WeightMap name ("embed", "layers.L.qkv",
// "layers.L.experts.E.w1", ...).
std::vector<std::int64_t> weight_shape(const ModelConfig& config, const std::string& name);

// A tensor the config asks of a checkpoint: its name there (after ModelConfig::weight_prefix),
// its shape, and the WeightMap entries it holds (a fused expert tensor holds a layer's experts).
struct ExpectedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  struct Part {
    std::string key;     // WeightMap name
    std::int64_t offset;  // elements into the tensor
    std::int64_t numel;
  };
  std::vector<Part> parts;
};
// Every tensor of a checkpoint of `config`: with `fused_experts` in transformers 5's layout
// (mlp.experts.gate_up_proj / down_proj) instead of the released per-expert tensors; with
// `own_lm_head` an lm_head.weight of its own (else the embedding serves, tied).
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config, bool fused_experts, bool own_lm_head);
// Buffers native transformers saves with some checkpoints and the engine recomputes.
bool is_model_buffer(const std::string& name);

// Fills `layer` with layer l's tensors of its kind (see LayerTensors), each from
// load(WeightMap name, WeightPrecision) -> Tensor, in the order every backend loads them.
template <typename Tensor, typename Load>
void load_layer_tensors(const ModelConfig& config, int l, LayerTensors<Tensor>& layer, Load&& load) {
  const std::string k = layer_weight_prefix(l);
  layer.kind = config.layer_kinds[l];
  layer.input_norm = load(k + "input_norm", WeightPrecision::Float32);
  layer.post_attn_norm = load(k + "post_attn_norm", WeightPrecision::Float32);
  if (layer.kind == LayerKind::Lightning) {
    layer.qkv = load(k + "qkv", WeightPrecision::Backend);
    layer.output_gate = load(k + "output_gate", WeightPrecision::Backend);
    layer.output_norm = load(k + "output_norm", WeightPrecision::Float32);
    layer.out_proj = load(k + "out_proj", WeightPrecision::Backend);
  } else {
    layer.q_proj = load(k + "q_proj", WeightPrecision::Backend);
    layer.k_proj = load(k + "k_proj", WeightPrecision::Backend);
    layer.v_proj = load(k + "v_proj", WeightPrecision::Backend);
    layer.o_proj = load(k + "o_proj", WeightPrecision::Backend);
  }
  layer.router = load(k + "router", WeightPrecision::Float32);
}

// Where each weight of the model is in a checkpoint, with its shape checked against the config.
// Resolving needs only the headers; both CPU and GPU backends load from it.
struct TensorSlice {
  const TensorView* view = nullptr;  // nullptr for a synthetic weight
  std::int64_t offset = 0;  // elements into the tensor (fused expert tensors)
  std::int64_t numel = 0;
  SyntheticFill synthetic = {};  // how to make it when there is no view

  // Bytes a load reads for it: its values in the checkpoint's dtype (synthetic: float32 made).
  std::uint64_t source_bytes() const {
    return static_cast<std::uint64_t>(numel) * (view ? dtype_size(view->dtype) : sizeof(float));
  }
};

class WeightMap {
 public:
  WeightMap(const ModelConfig& config, const Checkpoint& checkpoint);
  // Synthetic weights at the config's shapes, from `seed` (see synthetic_fill), no checkpoint.
  static WeightMap synthetic(const ModelConfig& config, std::uint64_t seed);
  // name: "embed", "lm_head", "final_norm" or "layers.L.<part>" as used by the backends.
  const TensorSlice& at(const std::string& name) const;
  std::uint64_t parameter_count() const { return parameter_count_; }
  const std::map<std::string, std::uint64_t>& bytes_per_dtype() const { return bytes_per_dtype_; }

 private:
  WeightMap() = default;
  std::map<std::string, TensorSlice> slices_;
  std::uint64_t parameter_count_ = 0;
  std::map<std::string, std::uint64_t> bytes_per_dtype_;
};

// The distribution of a synthetic weight (WeightMap name `key`, shape `shape`):
// - norm weights uniform in [0.5, 1.5): away from 1, so a skipped norm shows;
// - matrices uniform in +-1/sqrt(fan-in) (the last extent), so activations keep their scale;
// - routers uniform in +-sqrt(3/hidden): a unit-RMS input (what the post-attention norm gives)
//   gets router logits of standard deviation 1 across the experts, so each token's top-k follow
//   its own hidden state: the experts' loads are ragged around the mean (binomial spread: 8192
//   tokens x top 2 over 32 experts is 512 +- 22 each), none empty and none taking every token,
//   as a random router's loads in the benchmarks' MoE rows. A trained router is more skewed;
//   there is no per-expert bias to reproduce that with.
SyntheticFill synthetic_fill(const ModelConfig& config, const std::string& key, const std::vector<std::int64_t>& shape,
                             std::uint64_t seed);

// Per-head decay rates of a lightning layer, by the formula of the checkpoint's layout.
std::vector<float> lightning_slopes(const ModelConfig& config, int layer);

// The core format of ModelOptions::expert_dtype.
ExpertDType expert_dtype(ExpertFormat format);
// The int4 variant the quantizer uses (decoding is the same for both): on the demo model's
// trained layers the asymmetric one gives the MoE outputs the smaller error (docs/quantized-experts.md).
constexpr Int4Variant kInt4Variant = Int4Variant::Asymmetric;

// How a load gets its quantized experts (ModelOptions::expert_dtype int8 / int4).
struct ExpertLoad {
  ExpertDType dtype = ExpertDType::BF16;  // BF16: not quantized
  std::filesystem::path cache_directory;  // ModelOptions::expert_cache; empty: no cache
  std::string fingerprint;                // the model's, the cache's key
  int threads = 0;                        // for quantizing (0: every hardware thread)
};
// Where the quantized experts of a load came from.
struct ExpertLoadResult {
  std::uint64_t cache_bytes_read = 0;  // 0: quantized from the weights
  std::filesystem::path cache_file;    // the cache file read or written (empty: none)
};
// Quantizes layer `layer`'s experts where a backend keeps them (the CUDA backend's GPU quantizer,
// bit for bit core's), in place of the host's quantizer, counting the bytes it reads itself; it
// returns their bytes on the host when `for_cache` (the cache file is written from them), else
// nothing.
using PlacedExpertQuantizer = std::function<std::optional<QuantizedLayerExperts>(int layer, bool for_cache)>;
// Every layer's experts in load.dtype, in layer order: read from the cache file of this model
// and format when there is an intact one and given to take(layer, experts); else quantized from
// `map` (the checkpoint's or synthetic weights), on the host and given to take(), or by
// `quantize` where given, and written to the cache (when a folder is given; a cache that cannot
// be written costs only its speed-up). A cache found damaged part way is removed and the layers
// start again from the weights, so a layer may come twice: the later one replaces it.
// bytes_read(n) counts the bytes read (checkpoint or cache) as they are.
ExpertLoadResult load_quantized_experts(const ModelConfig& config, const WeightMap& map, const ExpertLoad& load,
                                        const std::function<void(int, QuantizedLayerExperts&&)>& take,
                                        const std::function<void(std::uint64_t)>& bytes_read,
                                        const PlacedExpertQuantizer& quantize = {});
// The key of the cache of `load` for a model of `config`.
ExpertCacheKey expert_cache_key(const ModelConfig& config, const ExpertLoad& load);

// The part of a [rows, width] weight (weight_shape, the trailing extents flattened) that a
// tensor-parallel rank holds: a block of its rows, or of its columns. All of it on one rank,
// and on every rank for the weights each keeps whole (norms, routers).
struct WeightPart {
  std::int64_t rows = 0, width = 0;
  bool by_columns = false;
  std::int64_t first = 0, count = 0;  // rows, or columns when by_columns

  bool whole() const { return first == 0 && count == (by_columns ? width : rows); }
  std::int64_t numel() const { return by_columns ? rows * count : count * width; }
};
// Rank `rank`'s part of the weight of this WeightMap name under the layout `plans` (as
// docs/tensor-parallel.md lays out: heads and vocabulary rows by rows; out_proj, o_proj and w2
// by columns; w1 and w3 by the rank's slice of the expert width).
WeightPart rank_weight_part(const ModelConfig& config, std::span<const RankLayout> plans, int rank,
                            const std::string& name);
// The part of the weight `name` as float32 into `out` (part.numel() values, row-major), reading
// only its bytes of the checkpoint: a block of rows is one range of the file, a block of columns
// one range per row (synthetic weights: only the part's values are made). Returns the bytes read
// (synthetic: 4 per value). Throws Error naming the tensor for a value that is not finite.
std::uint64_t read_weight_part(const WeightMap& map, const std::string& name, const WeightPart& part, float* out);
// Throws Error naming the tensor and element of a value that is not finite in the checkpoint's
// bytes of the weight `name` (a damaged checkpoint), read from their bits as stored: for a
// loader that uploads them unconverted.
void check_stored_values(const WeightMap& map, const std::string& name);

// The bytes a load has read, added from the loading threads (the ranks load at once) and
// reported as a running total to `report` (one call at a time). Once a rank has failed (a
// report that throws, as a cancelled load's does, fails its rank), the others stop at their next
// weight, and nothing more is reported.
class LoadTally {
 public:
  explicit LoadTally(std::function<void(std::uint64_t)> report = {}) : report_(std::move(report)) {}
  // Throws RankAborted once another rank has failed.
  void add(std::uint64_t bytes);
  std::uint64_t total() const;
  // Runs load(rank) for ranks 0 .. ranks - 1, each on a thread of its own (inline for one), and
  // rethrows the first failure.
  void on_every_rank(std::size_t ranks, const std::function<void(std::size_t)>& load);

 private:
  std::function<void(std::uint64_t)> report_;
  mutable std::mutex mutex_;
  std::uint64_t total_ = 0;
  std::atomic<bool> failed_ = false;
};
// Checks a pruned selection against the model: one set per layer, each of at least
// experts_per_token distinct ids within the experts. Throws Error naming the fault.
void check_expert_selection(const ModelConfig& config, const ExpertSelection& experts);
// Whether expert `e` of `layer` is loaded.
bool expert_kept(const ExpertSelection& experts, int layer, int e);
// Per layer the router mask of a pruned selection: float32 [experts], 0 kept, -inf not.
std::vector<float> expert_mask(const ModelConfig& config, const ExpertSelection& experts, int layer);

}  // namespace lightdesk
