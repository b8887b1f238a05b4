// Mixture of experts: router top-k, token permutation to experts and the weighted combine back.
#include <cmath>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

// One thread per row: the expert count is small (32 in the released models).
__global__ void route_top_k_kernel(const float* router_logits, std::int64_t rows, int experts, int k,
                                   std::int32_t* expert_ids, float* weights) {
  const std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (r >= rows) return;
  const float* x = router_logits + r * experts;
  float max_logit = x[0];
  for (int e = 1; e < experts; ++e) max_logit = fmaxf(max_logit, x[e]);
  float sum = 0.0f;
  for (int e = 0; e < experts; ++e) sum += expf(x[e] - max_logit);
  int chosen[kMaxTopK];
  float probs[kMaxTopK];
  float top_sum = 0.0f;
  for (int i = 0; i < k; ++i) {
    // The best expert not chosen yet; a strict comparison keeps the lower index on ties.
    int best = -1;
    float best_prob = 0.0f;
    for (int e = 0; e < experts; ++e) {
      bool taken = false;
      for (int c = 0; c < i; ++c) taken |= chosen[c] == e;
      const float p = expf(x[e] - max_logit) / sum;
      if (!taken && (best < 0 || p > best_prob)) {
        best = e;
        best_prob = p;
      }
    }
    chosen[i] = best;
    probs[i] = best_prob;
    top_sum += best_prob;
  }
  for (int i = 0; i < k; ++i) {
    expert_ids[r * k + i] = chosen[i];
    weights[r * k + i] = probs[i] / top_sum;
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* x, const std::int32_t* source_rows, std::int64_t width, T* out) {
  const T* src = x + std::int64_t{source_rows[blockIdx.x]} * width;
  T* dst = out + std::int64_t{blockIdx.x} * width;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

// One block per row.
template <typename T>
__global__ void combine_experts_kernel(const T* expert_out, const std::int32_t* slot_rows, const float* weights,
                                       int k, std::int64_t width, T* out) {
  const std::int64_t r = blockIdx.x;
  // The row's slots in increasing expert-output row (insertion sort; k is small).
  int order[kMaxTopK];
  for (int i = 0; i < k; ++i) {
    int j = i;
    while (j > 0 && slot_rows[r * k + order[j - 1]] > slot_rows[r * k + i]) {
      order[j] = order[j - 1];
      --j;
    }
    order[j] = i;
  }
  for (std::int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < k; ++i) {
      const int slot = order[i];
      acc += load(expert_out + std::int64_t{slot_rows[r * k + slot]} * width + c) * weights[r * k + slot];
    }
    store(out + r * width + c, acc);
  }
}

// One thread per row: the row's k routes sorted by expert id (insertion sort), so that expert
// outputs stored in slot order are summed in increasing expert order by combine_experts.
__global__ void order_routes_by_expert_kernel(std::int32_t* expert_ids, float* weights, std::int64_t rows, int k) {
  const std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (r >= rows) return;
  std::int32_t* ids = expert_ids + r * k;
  float* w = weights + r * k;
  for (int i = 1; i < k; ++i) {
    const std::int32_t id = ids[i];
    const float weight = w[i];
    int j = i;
    for (; j > 0 && ids[j - 1] > id; --j) {
      ids[j] = ids[j - 1];
      w[j] = w[j - 1];
    }
    ids[j] = id;
    w[j] = weight;
  }
}

constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerWarp = 4;

// Grid (output-row blocks, slots). x's row goes to shared memory as float32; each warp computes
// kGemvRowsPerWarp outputs at once, its lanes streaming 16-byte pieces of the weight rows (the
// weights are read once: no caching), then a warp sum.
template <typename T>
__global__ void __launch_bounds__(kGemvWarps * 32)
    expert_gemv_kernel(const T* weights, std::int64_t out_features, std::int64_t in_features,
                       const std::int32_t* expert_ids, const T* x, int slots_per_input, T* out) {
  extern __shared__ float x_row[];
  const std::int64_t slot = blockIdx.y;
  const T* input = x + (slot / slots_per_input) * in_features;
  for (std::int64_t i = threadIdx.x; i < in_features; i += blockDim.x) x_row[i] = load(input + i);
  __syncthreads();
  const T* w = weights + std::int64_t{expert_ids[slot]} * out_features * in_features;
  constexpr int kPiece = 16 / sizeof(T);
  // Whole 16-byte pieces when rows start aligned; the rest element by element.
  const std::int64_t vector_end = in_features % kPiece == 0 ? in_features : 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t first_row = (std::int64_t{blockIdx.x} * kGemvWarps + warp) * kGemvRowsPerWarp;
  float acc[kGemvRowsPerWarp] = {};
#pragma unroll 2
  for (std::int64_t i = std::int64_t{lane} * kPiece; i < vector_end; i += 32 * kPiece) {
    uint4 pieces[kGemvRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
      if (first_row + r < out_features)
        pieces[r] = __ldcs(reinterpret_cast<const uint4*>(w + (first_row + r) * in_features + i));
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r) {
      if (first_row + r >= out_features) continue;
      const T* values = reinterpret_cast<const T*>(&pieces[r]);
#pragma unroll
      for (int e = 0; e < kPiece; ++e) acc[r] += load(values + e) * x_row[i + e];
    }
  }
  for (std::int64_t i = vector_end + lane; i < in_features; i += 32)
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
      if (first_row + r < out_features) acc[r] += load(w + (first_row + r) * in_features + i) * x_row[i];
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r) {
    const float sum = warp_sum(acc[r]);
    if (lane == 0 && first_row + r < out_features) store(out + slot * out_features + first_row + r, sum);
  }
}

void check_top_k(int k, const char* what) {
  if (k <= 0 || k > kMaxTopK)
    fail(std::string(what) + ": experts_per_token " + std::to_string(k) + " is outside 1.." +
                std::to_string(kMaxTopK));
}

}  // namespace

void route_top_k(const float* router_logits, std::int64_t rows, int experts, int k, std::int32_t* expert_ids,
                 float* weights, cudaStream_t stream) {
  check_top_k(k, "route_top_k");
  if (k > experts)
    fail("route_top_k: top " + std::to_string(k) + " of only " + std::to_string(experts) + " experts");
  if (rows == 0) return;
  route_top_k_kernel<<<grid_for(rows, 128), 128, 0, stream>>>(router_logits, rows, experts, k, expert_ids, weights);
  check(cudaGetLastError(), "route_top_k");
}

void order_routes_by_expert(std::int32_t* expert_ids, float* weights, std::int64_t rows, int k, cudaStream_t stream) {
  check_top_k(k, "order_routes_by_expert");
  if (rows == 0) return;
  order_routes_by_expert_kernel<<<grid_for(rows, 128), 128, 0, stream>>>(expert_ids, weights, rows, k);
  check(cudaGetLastError(), "order_routes_by_expert");
}

template <typename T>
void expert_gemv(const T* weights, std::int64_t out_features, std::int64_t in_features, const std::int32_t* expert_ids,
                 const T* x, std::int64_t slots, int slots_per_input, T* out, cudaStream_t stream) {
  if (slots == 0 || out_features == 0) return;
  const auto kernel = expert_gemv_kernel<T>;
  const auto shared_bytes = static_cast<int>(in_features * sizeof(float));
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes),
        "expert_gemv (shared memory)");
  constexpr std::int64_t kRowsPerBlock = kGemvWarps * kGemvRowsPerWarp;
  const dim3 grid(static_cast<unsigned>((out_features + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(slots));
  kernel<<<grid, kGemvWarps * 32, shared_bytes, stream>>>(weights, out_features, in_features, expert_ids, x,
                                                          slots_per_input, out);
  check(cudaGetLastError(), "expert_gemv");
}

template <typename T>
void gather_rows(const T* x, const std::int32_t* source_rows, std::int64_t count, std::int64_t width, T* out,
                 cudaStream_t stream) {
  if (count == 0) return;
  gather_rows_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(x, source_rows, width, out);
  check(cudaGetLastError(), "gather_rows");
}

template <typename T>
void combine_experts(const T* expert_out, const std::int32_t* slot_rows, const float* weights, std::int64_t rows,
                     int k, std::int64_t width, T* out, cudaStream_t stream) {
  check_top_k(k, "combine_experts");
  if (rows == 0) return;
  combine_experts_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(expert_out, slot_rows, weights, k,
                                                                               width, out);
  check(cudaGetLastError(), "combine_experts");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                \
  template void gather_rows<T>(const T*, const std::int32_t*, std::int64_t, std::int64_t, T*, cudaStream_t);    \
  template void combine_experts<T>(const T*, const std::int32_t*, const float*, std::int64_t, int, std::int64_t, \
                                   T*, cudaStream_t);                                                           \
  template void expert_gemv<T>(const T*, std::int64_t, std::int64_t, const std::int32_t*, const T*, std::int64_t,  \
                               int, T*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
