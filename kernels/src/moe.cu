// Mixture of experts: router top-k, token permutation to experts and the weighted combine back.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

// One thread per row: the expert count is small (32 in the released models).
__global__ void route_top_k_kernel(const float* router_logits, std::int64_t rows, int experts, int k, bool by_expert,
                                   std::int32_t* expert_ids, float* weights, const float* expert_mask,
                                   const std::int32_t* expert_slots) {
  const std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (r >= rows) return;
  const float* row = router_logits + r * experts;
  auto x = [&](int e) { return expert_mask ? row[e] + expert_mask[e] : row[e]; };
  float max_logit = x(0);
  for (int e = 1; e < experts; ++e) max_logit = fmaxf(max_logit, x(e));
  float sum = 0.0f;
  for (int e = 0; e < experts; ++e) sum += expf(x(e) - max_logit);
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
      const float p = expf(x(e) - max_logit) / sum;
      if (!taken && (best < 0 || p > best_prob)) {
        best = e;
        best_prob = p;
      }
    }
    chosen[i] = best;
    probs[i] = best_prob;
    top_sum += best_prob;
  }
  if (by_expert) {
    // Insertion sort by id: k is small.
    for (int i = 1; i < k; ++i) {
      const int id = chosen[i];
      const float prob = probs[i];
      int j = i;
      for (; j > 0 && chosen[j - 1] > id; --j) {
        chosen[j] = chosen[j - 1];
        probs[j] = probs[j - 1];
      }
      chosen[j] = id;
      probs[j] = prob;
    }
  }
  for (int i = 0; i < k; ++i) {
    expert_ids[r * k + i] = expert_slots ? expert_slots[chosen[i]] : chosen[i];
    weights[r * k + i] = probs[i] / top_sum;
  }
}

// One block per row; a thread per 16-byte piece of it when the rows allow (WholePieces).
template <typename T, bool WholePieces>
__global__ void combine_experts_kernel(const T* expert_out, const std::int32_t* slot_rows, const float* weights,
                                       int k, std::int64_t width, T* out) {
  constexpr int kPiece = WholePieces ? 16 / sizeof(T) : 1;
  const std::int64_t r = blockIdx.x;
  for (std::int64_t c = std::int64_t{threadIdx.x} * kPiece; c < width; c += std::int64_t{blockDim.x} * kPiece) {
    float acc[kPiece] = {};
    for (int i = 0; i < k; ++i) {
      const std::int64_t slot = r * k + i;
      const std::int64_t row = slot_rows ? slot_rows[slot] : slot;
      const float weight = weights[slot];
      const T* from = expert_out + row * width + c;
      if constexpr (WholePieces) {
        const uint4 piece = *reinterpret_cast<const uint4*>(from);
        const T* values = reinterpret_cast<const T*>(&piece);
#pragma unroll
        for (int e = 0; e < kPiece; ++e) acc[e] += load(values + e) * weight;
      } else {
        acc[0] += load(from) * weight;
      }
    }
    if constexpr (WholePieces) {
      uint4 piece;
      T* values = reinterpret_cast<T*>(&piece);
#pragma unroll
      for (int e = 0; e < kPiece; ++e) store(values + e, acc[e]);
      *reinterpret_cast<uint4*>(out + r * width + c) = piece;
    } else {
      store(out + r * width + c, acc[0]);
    }
  }
}

// One block: the slots per expert (a shared-memory histogram), their exclusive prefix sum into
// first_row, and each expert's next free row (cursor) for the scatter.
__global__ void count_by_expert_kernel(const std::int32_t* expert_ids, std::int64_t slots, int experts,
                                       std::int32_t* first_row, std::int32_t* cursor) {
  extern __shared__ std::int32_t counts[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (std::int64_t s = threadIdx.x; s < slots; s += blockDim.x) atomicAdd(&counts[expert_ids[s]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    std::int32_t row = 0;
    for (int e = 0; e < experts; ++e) {
      first_row[e] = row;
      cursor[e] = row;
      row += counts[e];
    }
    first_row[experts] = row;
  }
}

// One block per slot: takes the next row of the slot's expert and copies the token there, in
// 16-byte pieces when the rows allow.
template <typename T, bool WholePieces>
__global__ void scatter_by_expert_kernel(const std::int32_t* expert_ids, int k, const T* x, std::int64_t width,
                                         std::int32_t* cursor, std::int32_t* slot_rows, T* grouped) {
  __shared__ std::int32_t row;
  const std::int64_t slot = blockIdx.x;
  if (threadIdx.x == 0) {
    row = atomicAdd(&cursor[expert_ids[slot]], 1);
    slot_rows[slot] = row;
  }
  __syncthreads();
  const T* src = x + (slot / k) * width;
  T* dst = grouped + std::int64_t{row} * width;
  if constexpr (WholePieces) {
    const auto* from = reinterpret_cast<const uint4*>(src);
    auto* to = reinterpret_cast<uint4*>(dst);
    for (std::int64_t i = threadIdx.x; i < width * std::int64_t{sizeof(T)} / 16; i += blockDim.x) to[i] = from[i];
  } else {
    for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
  }
}

constexpr int kGemvWarps = 8;
// 16-byte weight pieces each lane has in flight.
constexpr int kGemvPiecesInFlight = 8;

// Grid (blocks, slots), sized to the blocks the GPU holds at once. x's row goes to shared memory
// as float32 (when Gated, the SwiGLU of a [gate | up] row); then the slot's warps take its
// output rows in turn, one row at a time, so no warp has more than one row more than another to
// do: each lane streams kGemvPiecesInFlight 16-byte pieces of the row at once (the weights are
// read once: no caching), then a warp sum.
template <typename T, bool Gated>
__global__ void __launch_bounds__(kGemvWarps * 32)
    expert_gemv_kernel(const T* weights, std::int64_t out_features, std::int64_t in_features,
                       const std::int32_t* expert_ids, const T* x, int slots_per_input, T* out) {
  extern __shared__ float x_row[];
  const std::int64_t slot = blockIdx.y;
  const std::int64_t x_width = Gated ? 2 * in_features : in_features;
  const T* input = x + (slot / slots_per_input) * x_width;
  constexpr int kPiece = 16 / sizeof(T);
  // Whole 16-byte pieces when rows start aligned; the rest element by element.
  const std::int64_t vector_end = in_features % kPiece == 0 ? in_features : 0;
  // The x row in 16-byte pieces too: each thread's loads are in flight together, so a block
  // starts streaming weights after a few round trips rather than in_features / blockDim of them.
  const std::int64_t x_vector_end = reinterpret_cast<std::uintptr_t>(x) % 16 == 0 ? vector_end : 0;
  for (std::int64_t i = std::int64_t{threadIdx.x} * kPiece; i < x_vector_end; i += std::int64_t{blockDim.x} * kPiece) {
    const uint4 piece = *reinterpret_cast<const uint4*>(input + i);
    const T* values = reinterpret_cast<const T*>(&piece);
    if constexpr (Gated) {
      const uint4 up_piece = *reinterpret_cast<const uint4*>(input + in_features + i);
      const T* ups = reinterpret_cast<const T*>(&up_piece);
#pragma unroll
      for (int e = 0; e < kPiece; ++e) x_row[i + e] = silu_f(load(values + e)) * load(ups + e);
    } else {
#pragma unroll
      for (int e = 0; e < kPiece; ++e) x_row[i + e] = load(values + e);
    }
  }
  for (std::int64_t i = x_vector_end + threadIdx.x; i < in_features; i += blockDim.x)
    x_row[i] = Gated ? silu_f(load(input + i)) * load(input + in_features + i) : load(input + i);
  __syncthreads();
  const T* w = weights + std::int64_t{expert_ids[slot]} * out_features * in_features;
  const int lane = threadIdx.x % 32;
  const std::int64_t warps = std::int64_t{gridDim.x} * kGemvWarps;
  for (std::int64_t row = std::int64_t{blockIdx.x} * kGemvWarps + threadIdx.x / 32; row < out_features;
       row += warps) {
    const T* w_row = w + row * in_features;
    float acc = 0.0f;
    for (std::int64_t i = std::int64_t{lane} * kPiece; i < vector_end; i += 32 * kPiece * kGemvPiecesInFlight) {
      uint4 pieces[kGemvPiecesInFlight];
#pragma unroll
      for (int p = 0; p < kGemvPiecesInFlight; ++p)
        if (i + p * 32 * kPiece < vector_end)
          pieces[p] = __ldcs(reinterpret_cast<const uint4*>(w_row + i + p * 32 * kPiece));
#pragma unroll
      for (int p = 0; p < kGemvPiecesInFlight; ++p) {
        const std::int64_t at = i + p * 32 * kPiece;
        if (at >= vector_end) continue;
        const T* values = reinterpret_cast<const T*>(&pieces[p]);
#pragma unroll
        for (int e = 0; e < kPiece; ++e) acc += load(values + e) * x_row[at + e];
      }
    }
    for (std::int64_t i = vector_end + lane; i < in_features; i += 32) acc += load(w_row + i) * x_row[i];
    acc = warp_sum(acc);
    if (lane == 0) store(out + slot * out_features + row, acc);
  }
}

__global__ void restrict_to_experts_kernel(std::int32_t* expert_ids, float* weights, std::int64_t slots, int first,
                                           int count, int elsewhere) {
  const std::int64_t s = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (s >= slots) return;
  const int local = expert_ids[s] - first;
  if (local >= 0 && local < count) {
    expert_ids[s] = local;
  } else {
    expert_ids[s] = elsewhere;
    weights[s] = 0.0f;
  }
}

void check_top_k(int k, const char* what) {
  if (k <= 0 || k > kMaxTopK)
    fail(std::string(what) + ": experts_per_token " + std::to_string(k) + " is outside 1.." +
                std::to_string(kMaxTopK));
}

}  // namespace

void route_top_k(const float* router_logits, std::int64_t rows, int experts, int k, bool by_expert,
                 std::int32_t* expert_ids, float* weights, cudaStream_t stream, const float* expert_mask,
                 const std::int32_t* expert_slots) {
  check_top_k(k, "route_top_k");
  if (k > experts)
    fail("route_top_k: top " + std::to_string(k) + " of only " + std::to_string(experts) + " experts");
  if (rows == 0) return;
  route_top_k_kernel<<<grid_for(rows, 128), 128, 0, stream>>>(router_logits, rows, experts, k, by_expert, expert_ids,
                                                               weights, expert_mask, expert_slots);
  check(cudaGetLastError(), "route_top_k");
}

void restrict_to_experts(std::int32_t* expert_ids, float* weights, std::int64_t slots, int first, int count,
                         int elsewhere, cudaStream_t stream) {
  if (slots == 0) return;
  restrict_to_experts_kernel<<<grid_for(slots, 128), 128, 0, stream>>>(expert_ids, weights, slots, first, count,
                                                                       elsewhere);
  check(cudaGetLastError(), "restrict_to_experts");
}

template <typename T>
void group_by_expert(const std::int32_t* expert_ids, std::int64_t rows, int k, int experts, const T* x,
                     std::int64_t width, std::int32_t* first_row, std::int32_t* slot_rows, T* grouped,
                     std::int32_t* workspace, cudaStream_t stream) {
  const std::int64_t slots = rows * k;
  count_by_expert_kernel<<<1, 1024, static_cast<unsigned>(experts * sizeof(std::int32_t)), stream>>>(
      expert_ids, slots, experts, first_row, workspace);
  check(cudaGetLastError(), "group_by_expert (count)");
  if (slots == 0) return;
  const auto scatter = whole_pieces<T>(width, x, grouped) ? scatter_by_expert_kernel<T, true>
                                                          : scatter_by_expert_kernel<T, false>;
  scatter<<<static_cast<unsigned>(slots), kThreads, 0, stream>>>(expert_ids, k, x, width, workspace, slot_rows,
                                                                 grouped);
  check(cudaGetLastError(), "group_by_expert (scatter)");
}

// The shared-memory limit raised to the device's most, once: the width a launch reads decides
// what it takes.
template <typename T>
void allow_expert_gemv_shared_memory() {
  int optin = 0, device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  for (const auto kernel : {expert_gemv_kernel<T, true>, expert_gemv_kernel<T, false>})
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin),
          "expert_gemv (shared memory)");
}

void query_moe_limits(LaunchLimits& limits) {
  allow_expert_gemv_shared_memory<float>();
  allow_expert_gemv_shared_memory<bf16>();
  // Both instantiations use the same registers per thread or near enough: the gated one's bound.
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.expert_gemv_blocks, expert_gemv_kernel<bf16, true>,
                                                      kGemvWarps * 32, 0),
        "expert_gemv (occupancy)");
}

template <typename T>
void expert_gemv(const T* weights, std::int64_t out_features, std::int64_t in_features, const std::int32_t* expert_ids,
                 const T* x, bool gated, std::int64_t slots, int slots_per_input, T* out, const LaunchLimits& limits,
                 cudaStream_t stream) {
  if (slots == 0 || out_features == 0) return;
  const auto kernel = gated ? expert_gemv_kernel<T, true> : expert_gemv_kernel<T, false>;
  const auto shared_bytes = static_cast<int>(in_features * sizeof(float));
  // As many blocks as the GPU holds at once, shared among the slots (each slot at least one
  // block, at most a warp per row).
  const int blocks_per_multiprocessor =
      std::max(1, std::min(limits.expert_gemv_blocks, limits.shared_bytes_per_multiprocessor /
                                                          (shared_bytes + limits.reserved_shared_bytes_per_block)));
  const std::int64_t resident = std::int64_t{blocks_per_multiprocessor} * limits.multiprocessors;
  const std::int64_t blocks_per_slot =
      std::clamp<std::int64_t>(resident / slots, 1, (out_features + kGemvWarps - 1) / kGemvWarps);
  const dim3 grid(static_cast<unsigned>(blocks_per_slot), static_cast<unsigned>(slots));
  kernel<<<grid, kGemvWarps * 32, shared_bytes, stream>>>(weights, out_features, in_features, expert_ids, x,
                                                          slots_per_input, out);
  check(cudaGetLastError(), "expert_gemv");
}

template <typename T>
void combine_experts(const T* expert_out, const std::int32_t* slot_rows, const float* weights, std::int64_t rows,
                     int k, std::int64_t width, T* out, cudaStream_t stream) {
  check_top_k(k, "combine_experts");
  if (rows == 0) return;
  const auto kernel = whole_pieces<T>(width, expert_out, out) ? combine_experts_kernel<T, true>
                                                              : combine_experts_kernel<T, false>;
  kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(expert_out, slot_rows, weights, k, width, out);
  check(cudaGetLastError(), "combine_experts");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                \
  template void combine_experts<T>(const T*, const std::int32_t*, const float*, std::int64_t, int, std::int64_t, \
                                   T*, cudaStream_t);                                                           \
  template void expert_gemv<T>(const T*, std::int64_t, std::int64_t, const std::int32_t*, const T*, bool,          \
                               std::int64_t, int, T*, const LaunchLimits&, cudaStream_t);                                            \
  template void group_by_expert<T>(const std::int32_t*, std::int64_t, int, int, const T*, std::int64_t,          \
                                   std::int32_t*, std::int32_t*, T*, std::int32_t*, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
