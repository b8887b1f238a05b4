// The model's operations on an NVIDIA GPU: the device counterparts of engine/src/cpu_ops.h,
// with the same argument conventions (row-major, weights [out, in]). Every function enqueues its
// work on `stream` and returns at once; pointers are device memory unless stated otherwise.
//
// T is the activation type: float (the float32 checking mode) or __nv_bfloat16 (the default).
// Whatever T is, arithmetic accumulates in float32, and the lightning state, the router and
// the logits stay float32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace lightdesk::cuda {

using bf16 = __nv_bfloat16;

// Throws lightdesk::Error naming `what` when a CUDA call or the last launch failed.
void check(cudaError_t status, const char* what);
// Throws lightdesk::Error with `message` (arguments a kernel cannot take).
[[noreturn]] void fail(const std::string& message);

// What the launch planners need to know of a device: its multiprocessors, and how many thread
// blocks of each kernel that sizes its grid by them fit on one. Asked once per device by
// query_launch_limits, which also raises those kernels' shared-memory limits (a per-device
// setting their launches rely on), and kept by the object that owns the device (DeviceContext):
// no launch of ours asks the driver (CUTLASS's grouped GEMM still sets its kernel's shared-memory
// limit as it initialises each call).
struct LaunchLimits {
  int device = 0;
  int multiprocessors = 0;
  // Thread blocks per multiprocessor.
  int attention_decode_blocks = 0;
  int attention_prefill_blocks = 0;  // the mma.sync prefill kernel
  int attention_hopper_blocks = 0;   // the sm_90a prefill kernel; 0: the device does not run it
  int lightning_prefill_blocks = 0;
  // expert_gemv's shared memory depends on the width it reads: its blocks per multiprocessor are
  // kept as the register and thread limit, and the shared memory limit follows from these two.
  int expert_gemv_blocks = 0;
  int quantized_gemv_blocks = 0;  // quantized_expert_gemv's, the same way
  int shared_bytes_per_multiprocessor = 0;
  int shared_bytes_per_block_optin = 0;
  int reserved_shared_bytes_per_block = 0;
};
// Of the current device.
LaunchLimits query_launch_limits();

// A sequence position the host knows (`value`), or one the kernels read from device memory
// (`device`, with `value` then an upper bound the launch is planned for): a CUDA graph replays
// the same launches at every decode step, the position coming from memory.
struct Position {
  Position(std::int64_t known) : value(known) {}  // NOLINT(google-explicit-constructor): positions are plain numbers
  Position(const std::int64_t* on_device, std::int64_t at_most) : value(at_most), device(on_device) {}
  __device__ std::int64_t get() const { return device ? *device : value; }

  std::int64_t value = 0;
  const std::int64_t* device = nullptr;
};

// out[n] = T(in[n]) and back.
template <typename T>
void from_float(const float* in, std::int64_t n, T* out, cudaStream_t stream);
template <typename T>
void to_float(const T* in, std::int64_t n, float* out, cudaStream_t stream);

// out[i] = a uniform value in [low, high) hashed from (seed, i): random data made on the device
// (benchmarks), the same for the same seed.
template <typename T>
void fill_uniform(T* out, std::int64_t n, std::uint64_t seed, float low, float high, cudaStream_t stream);

// out[r] = table[tokens[r]] for rows of `width`.
template <typename T>
void embed_rows(const T* table, const std::int32_t* tokens, std::int64_t rows, std::int64_t width, T* out,
                cudaStream_t stream);

// y = weight * x / sqrt(mean(x²) + eps) over each row; y may alias x.
template <typename T>
void rms_norm(const T* x, std::int64_t rows, std::int64_t width, const float* weight, float eps, T* y,
              cudaStream_t stream);

// embed_rows over a table of only the vocabulary rows first_row.. first_row + table_rows - 1 (a
// tensor-parallel rank's): a token outside them gets a row of zeros.
template <typename T>
void embed_part_rows(const T* table, std::int64_t first_row, std::int64_t table_rows, const std::int32_t* tokens,
                     std::int64_t rows, std::int64_t width, T* out, cudaStream_t stream);

// RMSNorm of rows whose channels are spread over ranks: sums[r] = Σ x[r]² (float32), and, once
// the ranks' sums are added, y = weight * x / sqrt(sums / norm_width + eps); y may alias x.
template <typename T>
void sum_squares(const T* x, std::int64_t rows, std::int64_t width, float* sums, cudaStream_t stream);
template <typename T>
void rms_norm_by_sums(const T* x, std::int64_t rows, std::int64_t width, const float* sums, std::int64_t norm_width,
                      const float* weight, float eps, T* y, cudaStream_t stream);

// x = silu(x), elementwise.
template <typename T>
void silu(T* x, std::int64_t n, cudaStream_t stream);

// x *= sigmoid(gate), elementwise.
template <typename T>
void sigmoid_gate(T* x, const T* gate, std::int64_t n, cudaStream_t stream);

// out = a * alpha + b * beta, elementwise; out may alias a or b.
template <typename T>
void scaled_sum(const T* a, float alpha, const T* b, float beta, std::int64_t n, T* out, cudaStream_t stream);

// out[r, c] = silu(gate_up[r, c]) * gate_up[r, width + c] for gate_up [rows, 2 * width].
template <typename T>
void swiglu(const T* gate_up, std::int64_t rows, std::int64_t width, T* out, cudaStream_t stream);

// Rotate-half RoPE on the first rotary_dim dims of each head; row r has position first_position + r.
template <typename T>
void rope(T* x, std::int64_t rows, int heads, int head_dim, int rotary_dim, float theta, Position first_position,
          cudaStream_t stream);

// Largest head_dim the attention kernels take.
constexpr int kMaxHeadDim = 128;

// Lightning attention of `rows` tokens continuing from `state` (float32 [heads, d, d], updated
// in place): qkv [rows, heads * 3d] (SiLU applied, per head [q | k | v]), out [rows, heads * d],
// slopes [heads] float32. Block-wise like cpu::lightning_prefill. bf16 with head_dim a multiple
// of 8 runs chunked on tensor cores, parallel over runs of chunks whose start states go to
// `workspace` when it holds workspace_bytes >= lightning_prefill_workspace_bytes (else to
// memory allocated in stream order); float32 runs on CUDA cores, sequentially per head.
template <typename T>
void lightning_prefill(const T* qkv, std::int64_t rows, int heads, int head_dim, const float* slopes, float* state,
                       T* out, const LaunchLimits& limits, cudaStream_t stream, void* workspace = nullptr,
                       std::size_t workspace_bytes = 0);
template <typename T>
std::size_t lightning_prefill_workspace_bytes(std::int64_t rows, int heads, int head_dim, const LaunchLimits& limits);
// One token: S = exp(-s) S + kᵀv, o = q S.
template <typename T>
void lightning_decode(const T* qkv, int heads, int head_dim, const float* slopes, float* state, T* out,
                      cudaStream_t stream);

// Where the lightning states (float32 [heads, d, d] each) of a batch of sequences lie: sequence
// b's at table[b] (device memory, one pointer per sequence, each 16-byte aligned as cudaMalloc's
// are) or, without a table, at base + b * stride.
struct LightningStates {
  float* base = nullptr;
  std::int64_t stride = 0;
  float* const* table = nullptr;
  __host__ __device__ float* of(int sequence) const { return table ? table[sequence] : base + sequence * stride; }
};
constexpr int kMaxLightningDecodeBatch = 65535;
// One token for each of `batch` sequences in one launch: qkv [batch, heads * 3d], out
// [batch, heads * d], sequence b's state states.of(b); the same step as above for each.
template <typename T>
void lightning_decode(const T* qkv, int batch, int heads, int head_dim, const float* slopes, LightningStates states,
                      T* out, cudaStream_t stream);

// Where a softmax layer's keys and values lie. Each position has a row of kv_width = kv_heads ·
// head_dim values in `keys` and one in `values`. Positions come in pages of 2^page_shift
// (>= kMinKvPageShift); page n starts page_table[n] · page_stride elements into `keys` (and into
// `values`), or n · page_stride without a page table (one contiguous run: contiguous_kv).
constexpr int kMinKvPageShift = 6;
template <typename T>
struct KvCacheView {
  T* keys = nullptr;
  T* values = nullptr;
  const std::int32_t* page_table = nullptr;  // device memory; nullptr: pages in order
  std::int64_t page_stride = 0;
  int page_shift = kMinKvPageShift;

  __host__ __device__ std::int64_t row_offset(std::int64_t position, std::int64_t kv_width) const {
    const std::int64_t page = position >> page_shift;
    const std::int64_t row = position & ((std::int64_t{1} << page_shift) - 1);
    return (page_table ? page_table[page] : page) * page_stride + row * kv_width;
  }
  KvCacheView<const T> as_const() const { return {keys, values, page_table, page_stride, page_shift}; }
};

template <typename T>
KvCacheView<T> contiguous_kv(T* keys, T* values, std::int64_t kv_width) {
  return {keys, values, nullptr, kv_width << kMinKvPageShift, kMinKvPageShift};
}

// Rows [count, kv_width] into positions first.. of the cache, and back; a null keys or values
// pointer leaves that side alone. The rows are T or float32 (converted on the way: state export
// and import need no staging copy).
template <typename T, typename Rows>
void write_kv_rows(const Rows* keys, const Rows* values, std::int64_t count, Position first, std::int64_t kv_width,
                   KvCacheView<T> kv, cudaStream_t stream);
template <typename T, typename Rows>
void read_kv_rows(KvCacheView<const T> kv, std::int64_t first, std::int64_t count, std::int64_t kv_width,
                  Rows* keys, Rows* values, cudaStream_t stream);

// Causal GQA softmax attention of `rows` queries [rows, heads * d] at positions first_position..
// over the cache's positions 0..first_position + rows - 1 (the new rows already stored).
// bf16 with head_dim a multiple of 8 runs on tensor cores (flash attention, keys split over
// thread blocks when the query rows alone cannot fill the GPU); float32 on CUDA cores.
// The splits' partial results go to `workspace` when it holds workspace_bytes >=
// softmax_attention_workspace_bytes (planned for first_position.value), else to memory
// allocated in stream order. A launch planned for first_position.value is right for any smaller
// position read from the device, and the decode kernel (rows · heads / kv_heads <= 16, bf16)
// stays balanced over it: its key splits are sized from the position it reads.
template <typename T>
void softmax_attention(const T* q, std::int64_t rows, Position first_position, KvCacheView<const T> kv, int heads,
                       int kv_heads, int head_dim, T* out, const LaunchLimits& limits, cudaStream_t stream,
                       void* workspace = nullptr, std::size_t workspace_bytes = 0);
template <typename T>
std::size_t softmax_attention_workspace_bytes(std::int64_t rows, std::int64_t first_position, int heads, int kv_heads,
                                              int head_dim, const LaunchLimits& limits);
// The same over contiguous keys/values [first_position + rows, kv_heads * d].
template <typename T>
void softmax_attention(const T* q, std::int64_t rows, std::int64_t first_position, const T* keys, const T* values,
                       int heads, int kv_heads, int head_dim, T* out, const LaunchLimits& limits,
                       cudaStream_t stream) {
  softmax_attention(q, rows, first_position, contiguous_kv(keys, values, std::int64_t{kv_heads} * head_dim), heads,
                    kv_heads, head_dim, out, limits, stream);
}

// Largest experts_per_token the router and combine kernels take.
constexpr int kMaxTopK = 8;

// Per row of router_logits [rows, experts] (float32): softmax, the top k (lower index first on
// ties), renormalised; writes k ids and weights per row, by decreasing weight, or by increasing
// expert id when by_expert (the order the MoE combine sums in). Pruned experts: expert_mask
// (float32 [experts], or null) is added to every row's logits first, -inf keeping an expert out;
// expert_slots (int32 [experts], or null) maps each chosen id to its slot in a block holding only
// the kept experts, written in place of the id (slots increase with the ids they stand for).
void route_top_k(const float* router_logits, std::int64_t rows, int experts, int k, bool by_expert,
                 std::int32_t* expert_ids, float* weights, cudaStream_t stream, const float* expert_mask = nullptr,
                 const std::int32_t* expert_slots = nullptr);

// A rank holding experts first.. first + count - 1 of route_top_k's choices: each slot's id
// becomes its index among them, and a slot routed to another rank's expert gets `elsewhere`
// and weight 0 (that rank adds its share), so the same products and combine run on the rank's
// experts alone.
void restrict_to_experts(std::int32_t* expert_ids, float* weights, std::int64_t slots, int first, int count,
                         int elsewhere, cudaStream_t stream);

// The token permutation of a MoE layer, on the device: the slots (row r's i-th route is slot
// r·k + i, expert_ids[slot] < experts) grouped by expert. Writes first_row[experts + 1] (expert
// e's rows of grouped are first_row[e] .. first_row[e + 1]), slot_rows[slot] (the slot's row of
// grouped) and grouped[slot_rows[slot]] = x[slot / k] (rows of `width`). Within an expert the
// rows come in no set order; the products do not depend on it. workspace: experts int32.
template <typename T>
void group_by_expert(const std::int32_t* expert_ids, std::int64_t rows, int k, int experts, const T* x,
                     std::int64_t width, std::int32_t* first_row, std::int32_t* slot_rows, T* grouped,
                     std::int32_t* workspace, cudaStream_t stream);

// For each group g < groups, with rows first_row[g] .. first_row[g + 1] (device memory; `rows`
// in all, first_row[groups], which picks the tiling): out[those rows] = in[those rows] · W_gᵀ, W_g
// the g-th [out_features, in_features] matrix of `weights`; bf16 with float32 accumulation, one
// launch for all groups. in_features and out_features must be multiples of 8. workspace:
// grouped_linear_workspace_bytes(groups, limits) bytes of device memory.
std::size_t grouped_linear_workspace_bytes(int groups, const LaunchLimits& limits);
void grouped_linear(const bf16* in, const std::int32_t* first_row, int groups, std::int64_t rows,
                    std::int64_t in_features, const bf16* weights, std::int64_t out_features, bf16* out,
                    const LaunchLimits& limits, void* workspace, std::size_t workspace_bytes, cudaStream_t stream);

// The few-token expert product, with the experts chosen on the device: out[s] = W_e x_s for each
// slot s, e = expert_ids[s] (device memory), W_e the e-th [out_features, in_features] matrix of
// `weights`, x_s = x[s / slots_per_input]; when gated, x holds [gate | up] rows of 2 · in_features
// and x_s = silu(gate) ⊙ up (the SwiGLU of the gate/up product, never stored).
// Weight-bandwidth bound: for decode.
template <typename T>
void expert_gemv(const T* weights, std::int64_t out_features, std::int64_t in_features, const std::int32_t* expert_ids,
                 const T* x, bool gated, std::int64_t slots, int slots_per_input, T* out, const LaunchLimits& limits,
                 cudaStream_t stream);

// Quantized expert matrices on the device, in the canonical layouts of core's expert_quant.h
// (read as stored, no repacking): int8 with a float32 scale per row, rows of round_up(cols, 16)
// bytes; int4 with an fp16 scale and offset per (row, group of kInt4Group columns, the last one
// partial), element c of a row in byte c / 2 (the low nibble for even c), rows of
// round_up(ceil(cols / 2), 16) bytes. Padding bytes are 0. `experts` matrices of [rows, cols]
// one after another: expert e's packed rows at e · rows · row_bytes(), its scales (and offsets)
// at e · rows · groups().
enum class QuantFormat : std::uint8_t { Int8, Int4 };
constexpr std::int64_t kInt4Group = 128;

struct QuantizedExperts {
  QuantFormat format = QuantFormat::Int8;
  std::int64_t rows = 0;  // output channels of one expert's matrix
  std::int64_t cols = 0;  // input dimension
  const std::uint8_t* packed = nullptr;
  const float* row_scales = nullptr;      // int8: [experts][rows]
  const __half* group_scales = nullptr;   // int4: [experts][rows][groups]
  const __half* group_offsets = nullptr;  // int4: [experts][rows][groups]

  __host__ __device__ std::int64_t row_bytes() const {
    const std::int64_t bytes = format == QuantFormat::Int8 ? cols : (cols + 1) / 2;
    return (bytes + 15) / 16 * 16;
  }
  __host__ __device__ std::int64_t groups() const {
    return format == QuantFormat::Int8 ? 1 : (cols + kInt4Group - 1) / kInt4Group;
  }
  // Bytes of one expert's matrix: packed rows, scales, offsets.
  std::int64_t expert_bytes() const {
    return rows * row_bytes() + (format == QuantFormat::Int8 ? rows * 4 : rows * groups() * 4);
  }
};

// Quantizes `experts` matrices [rows, cols] of T (row-major, one after another) into `to`
// (whose packed, scale and offset arrays are written: const only for the readers), computing as
// the format is defined (float32; int4 scales and offsets rounded to fp16 before q is computed;
// round half away from zero). int4_symmetric picks the int4 variant. For benchmarks and for
// quantizing on the GPU at load time.
template <typename T>
void quantize_experts(const T* weights, int experts, const QuantizedExperts& to, bool int4_symmetric,
                      cudaStream_t stream);

// out = the float values of experts first_expert .. first_expert + count - 1, [count][rows][cols]
// of T: the dequantized scratch a prefill's grouped GEMM reads.
template <typename T>
void dequantize_experts(const QuantizedExperts& w, int first_expert, int count, T* out, cudaStream_t stream);

// grouped_linear with int8 weights (groups = the experts of `w`, out_features = w.rows,
// in_features = w.cols, both multiples of 8), the weights converted and scaled in the GEMM's
// main loop: for prefill. (int4 prefill dequantizes into a bf16 scratch for grouped_linear.)
// workspace: int8_grouped_linear_workspace_bytes(w, groups, limits) bytes.
std::size_t int8_grouped_linear_workspace_bytes(const QuantizedExperts& w, int groups, const LaunchLimits& limits);
void int8_grouped_linear(const bf16* in, const std::int32_t* first_row, int groups, const QuantizedExperts& w,
                         bf16* out, const LaunchLimits& limits, void* workspace, std::size_t workspace_bytes,
                         cudaStream_t stream);

// The few-token expert product over quantized weights, for rows grouped by expert
// (group_by_expert): out[j] = W_e x_j for each row j of expert e's rows first_row[e] ..
// first_row[e + 1] (device memory, `rows` in all), W_e the e-th matrix of `w` ([w.rows, w.cols]);
// x has rows of w.cols, or when gated [gate | up] rows of 2 · w.cols and x_j = silu(gate) ⊙ up.
// bf16 activations, float32 accumulation; each block dequantizes a piece of W_e once for up to
// kMaxQuantGemvTokens of the expert's rows. Weight-bandwidth bound: for decode (a few tokens
// per expert; max_rows_per_expert bounds them, e.g. the tokens of the step).
constexpr int kMaxQuantGemvTokens = 4;
void quantized_expert_gemv(const QuantizedExperts& w, const std::int32_t* first_row, int experts, const bf16* x,
                           bool gated, std::int64_t rows, std::int64_t max_rows_per_expert, bf16* out,
                           const LaunchLimits& limits, cudaStream_t stream);

// out[r] = Σ_i weights[r*k+i] · expert_out[slot_rows[r*k+i]], summed in increasing i (route_top_k
// by_expert: increasing expert order); slot_rows null: expert_out is in slot order (row r*k + i).
template <typename T>
void combine_experts(const T* expert_out, const std::int32_t* slot_rows, const float* weights, std::int64_t rows,
                     int k, std::int64_t width, T* out, cudaStream_t stream);

// Drawing the next token on the device by the CPU sampler's rules (SamplingParams in engine.h):
// temperature <= 0 is greedy (the lowest id among equal maxima); otherwise the logits sorted
// high to low (lower id first among equals) are cut to top_k (0 = all), scaled by the
// temperature, cut to the smallest prefix whose probability reaches top_p, and one token is
// drawn from that prefix with a uniform number hashed from (seed, draw): the same seed and draw
// give the same token.
struct TokenSampling {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  std::uint64_t draw = 0;
};
// Device memory sample_token needs for a vocabulary of `vocab` (it takes no other memory).
std::size_t sampling_workspace_bytes(std::int64_t vocab);
// token (device, one int32) from logits (device, float32 [vocab]).
void sample_token(const float* logits, std::int64_t vocab, const TokenSampling& sampling, void* workspace,
                  std::int32_t* token, cudaStream_t stream);

}  // namespace lightdesk::cuda
