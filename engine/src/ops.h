// The operations a model graph is written in, and the interface every backend implements for
// them (CPU in cpu_model_ops.cpp, CUDA in cuda_model_ops.cpp). A backend owns the memory, the
// kernels and the stream its ops run on; a graph (models/) owns the order of the ops.
//
// Conventions are those of cpu_ops.h and cuda_ops.h: row-major, weights [out, in] as
// torch.nn.Linear stores them, shapes passed with each op. A Tensor is a place in the backend's
// memory (host for the CPU, device for CUDA) and its element type; the activation type is the
// backend's (float32 on the CPU, bf16 or float32 on CUDA), the norms' weights, the router, the
// lightning states and the logits are float32 everywhere.
//
// Every op has an OpKind, and tests/engine/backend_ops_test.cpp has a case for every OpKind,
// run on every backend present against the CPU: a kind without a case fails that suite.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lightdesk/expert_quant.h"

namespace lightdesk {

class ExpertOffload;

enum class ElementType : std::uint8_t { F32, BF16, I32 };

constexpr std::size_t element_bytes(ElementType type) { return type == ElementType::BF16 ? 2 : 4; }
const char* element_name(ElementType type);

struct Tensor {
  void* data = nullptr;
  ElementType type = ElementType::F32;

  template <typename U>
  U* as() const {
    return static_cast<U*>(data);
  }
  // The tensor `elements` elements further on (a row of a matrix, a part of a buffer).
  Tensor at(std::int64_t elements) const {
    return {static_cast<char*>(data) + elements * static_cast<std::int64_t>(element_bytes(type)), type};
  }
};

// Memory an ops object allocated; freed with it.
class TensorBuffer {
 public:
  virtual ~TensorBuffer() = default;
  virtual Tensor tensor() const = 0;
};

// A sequence position: known to the host (`value`), or read by the ops from memory at run time
// (`on_device`, with `value` then the largest it can be): a captured CUDA graph replays the same
// launches at every decode step, the position coming from memory.
struct StepPosition {
  std::int64_t value = 0;
  const std::int64_t* on_device = nullptr;
};

// A softmax layer's keys and values: rows of kv_width values per position, positions in pages
// of 2^page_shift; page n starts page_table[n] · page_stride elements into keys (and values), or
// n · page_stride without a table (one contiguous run, the only layout the CPU takes).
struct KvTensor {
  Tensor keys, values;
  const std::int32_t* page_table = nullptr;
  std::int64_t page_stride = 0;
  int page_shift = 6;
};
KvTensor contiguous_kv(Tensor keys, Tensor values, std::int64_t kv_width);

// One expert's matrices: w1 [width, hidden] (through SiLU), w3 [width, hidden], w2 [hidden, width].
struct ExpertTensors {
  Tensor w1, w3, w2;
};
// One expert's matrices quantized (int8 or int4, core's expert_quant.h layout) in the backend's
// memory: gate_up [2 · width, hidden], w1's rows then w3's, and down [hidden, width].
struct QuantizedExpertTensors {
  QuantizedView gate_up, down;
};
// A MoE layer's weights: the experts in the backend's weight type (`experts`, for moe) or
// quantized (`quantized`, for quantized_moe), one per expert of the router. The CUDA ops need
// each layer's experts in one block: expert e's w1 at e · 2 · width · hidden elements from
// expert 0's, its w3 right after it, its w2 at e · hidden · width from expert 0's (the layout of
// the CUDA backend and of the op tests); quantized, expert e's gate_up and down at e times one
// expert's packed bytes, scales and offsets from expert 0's (one QuantizedMatrix of all the
// experts' rows, as the quantized cache keeps a layer).
// A tensor-parallel rank holds some of the experts (expert parallel: the others' tensors are
// null, and the op skips their tokens' shares, which the ranks holding them add) or a slice of
// every expert's intermediate width (tensor parallel: `width` is the slice's).
// Pruned experts (PreMoe): `expert_mask` is added to the router's logits before its softmax, 0
// for a kept expert and -inf for one not kept, which is slicing the router's rows; a pruned
// expert's tensors are null (never loaded). The CUDA ops keep the kept experts in a block of
// their own, in increasing id order, and map a routed id to its place by `expert_slots`
// (one rank only: the backends refuse pruned experts under tensor parallel).
// Exact mode (docs/expert-offload.md): every expert's tensors are null, whatever the experts'
// format; `offload` holds them all in its store, and the op brings each chosen expert into one of
// layer `offload_layer`'s slots before computing it (the graph calls moe for such a layer).
struct MoeTensors {
  Tensor router;  // float32 [experts, hidden]
  std::vector<ExpertTensors> experts;
  std::vector<QuantizedExpertTensors> quantized;
  std::int64_t hidden = 0;
  std::int64_t width = 0;
  int top_k = 0;
  Tensor expert_mask;   // float32 [experts], or null: every expert
  Tensor expert_slots;  // int32 [experts]: a kept expert's place in the block (CUDA), or null
  ExpertOffload* offload = nullptr;
  int offload_layer = 0;

  bool is_quantized() const { return !quantized.empty(); }
  std::size_t expert_count() const { return is_quantized() ? quantized.size() : experts.size(); }
};

enum class OpKind {
  Transfer,  // allocate, upload, download
  Embed,
  RmsNorm,
  Linear,
  Silu,
  SigmoidGate,
  ScaledSum,
  Copy,
  Rope,
  LightningAttention,
  WriteKv,
  SoftmaxAttention,
  Moe,
  QuantizedMoe,
  Count
};
const char* op_name(OpKind kind);
constexpr std::size_t kOpKinds = static_cast<std::size_t>(OpKind::Count);

class ModelOps {
 public:
  virtual ~ModelOps() = default;

  // float32 or bf16: what activations are kept in.
  virtual ElementType activation_type() const = 0;

  // Transfer. Host values are float32 (int32 for I32 tensors); upload and download convert to
  // and from the tensor's type. A download waits for the ops queued before it.
  virtual std::unique_ptr<TensorBuffer> allocate(ElementType type, std::int64_t count, const std::string& what) = 0;
  virtual void upload(const void* host, std::int64_t count, Tensor to) = 0;
  virtual void download(Tensor from, std::int64_t count, void* host) = 0;

  // Embed: out[r] = table[tokens[r]] for rows of `width`; tokens I32.
  virtual void embed(Tensor table, Tensor tokens, std::int64_t rows, std::int64_t width, Tensor out) = 0;
  // Embed over a table that holds only the vocabulary rows first_row.. first_row + table_rows - 1
  // (a tensor-parallel rank's part): a token outside them gets a row of zeros, so that the sum
  // of the ranks' parts is the embedding.
  virtual void embed_part(Tensor table, std::int64_t first_row, std::int64_t table_rows, Tensor tokens,
                          std::int64_t rows, std::int64_t width, Tensor out) = 0;
  // RmsNorm: y = weight * x / sqrt(mean(x²) + eps) over each row; y may be x.
  virtual void rms_norm(Tensor x, std::int64_t rows, std::int64_t width, Tensor weight, float eps, Tensor y) = 0;
  // RmsNorm of rows whose channels are spread over ranks: sum_squares writes each row's Σ x²
  // (float32 [rows]); once the ranks' sums are added, rms_norm_by_sums normalises the rank's
  // channels by them: y = weight * x / sqrt(sums / norm_width + eps).
  virtual void sum_squares(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums) = 0;
  virtual void rms_norm_by_sums(Tensor x, std::int64_t rows, std::int64_t width, Tensor sums,
                                std::int64_t norm_width, Tensor weight, float eps, Tensor y) = 0;
  // Linear: y[rows, out] = x[rows, in] · w[out, in]ᵀ, accumulated in float32; y float32 or the
  // activation type.
  virtual void linear(Tensor x, std::int64_t rows, std::int64_t in, Tensor w, std::int64_t out, Tensor y) = 0;
  // Silu: x = silu(x).
  virtual void silu(Tensor x, std::int64_t count) = 0;
  // SigmoidGate: x *= sigmoid(gate).
  virtual void sigmoid_gate(Tensor x, Tensor gate, std::int64_t count) = 0;
  // ScaledSum: out = a * alpha + b * beta; out may be a or b.
  virtual void scaled_sum(Tensor a, float alpha, Tensor b, float beta, std::int64_t count, Tensor out) = 0;
  // Copy: `count` values of one type.
  virtual void copy(Tensor from, std::int64_t count, Tensor to) = 0;
  // Rope: rotate-half RoPE on the first rotary_dim dims of each head of x [rows, heads * head_dim];
  // row r has position first + r.
  virtual void rope(Tensor x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta,
                    StepPosition first) = 0;
  // LightningAttention: `rows` tokens continuing from `state` (float32 [heads, d, d], updated):
  // qkv [rows, heads * 3d] (SiLU applied, per head [q | k | v]), slopes float32 [heads], out
  // [rows, heads * d].
  virtual void lightning_attention(Tensor qkv, std::int64_t rows, int heads, int head_dim, Tensor slopes,
                                   Tensor state, Tensor out) = 0;
  // WriteKv: rows [rows, kv_width] of keys and values into positions first.. of the cache.
  virtual void write_kv(Tensor keys, Tensor values, std::int64_t rows, StepPosition first, std::int64_t kv_width,
                        const KvTensor& cache) = 0;
  // SoftmaxAttention: causal GQA attention of q [rows, heads * d] at positions first.. over the
  // cache's positions 0..first + rows - 1; scale d^-0.5.
  virtual void softmax_attention(Tensor q, std::int64_t rows, StepPosition first, const KvTensor& cache, int heads,
                                 int kv_heads, int head_dim, Tensor out) = 0;
  // Moe: out[rows, hidden] = Σ_k weight_k · w2(silu(w1 x) ⊙ w3 x) over each row's top-k experts
  // by the float32 router (softmax, top k with the lower id first on ties, renormalised), summed
  // in increasing expert order. router_logits, when set (float32 [rows, experts]), gets the
  // router's logits before the mask; with `out` null the op computes only those.
  virtual void moe(const MoeTensors& weights, Tensor x, std::int64_t rows, Tensor out, Tensor router_logits) = 0;
  // QuantizedMoe: moe over weights.quantized (int8 or int4 experts), the same routing, sums and
  // router_logits, each product over the dequantized weights (w ~= q · scale + offset) in float32.
  virtual void quantized_moe(const MoeTensors& weights, Tensor x, std::int64_t rows, Tensor out,
                             Tensor router_logits) = 0;
};

// The CPU ops (the reference), with `threads` worker threads (0: all hardware threads).
std::unique_ptr<ModelOps> make_cpu_ops(int threads);

// The ops of a backend built into this program, for checking each against the CPU's.
struct OpsBackend {
  std::string name;  // "cpu", "cuda-f32", "cuda-bf16"
  // Empty where they can run here, else why not (no GPU).
  std::function<std::string()> unavailable;
  std::function<std::unique_ptr<ModelOps>()> make;
};
// Every backend's ops: the CPU's, then the CUDA ones (on device 0) where the CUDA plugin loads.
std::vector<OpsBackend> ops_backends();

}  // namespace lightdesk
