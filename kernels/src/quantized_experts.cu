// Quantized expert matrices (int8, int4 in core's canonical layouts): the decode GEMV that reads
// them, the dequantization a prefill's grouped GEMM reads from, and the GPU quantizer.
//
// Decoding a weight without an integer-to-float conversion (16 per clock per multiprocessor, too
// few to keep up with the memory): the bits of q are put into the mantissa of 1.0f, which gives
// f = 1 + q / 2^bits exactly, and the dot product Σ f·x is taken instead of Σ q·x; with
// X = Σ x over the same elements (kept per 16-byte piece of the row and per token in shared
// memory), Σ q·x follows: int4 (4 bits): Σ q·x = 16 (A − X); int8 stores q + 128 as an unsigned
// byte u after an xor, f = 1 + u / 256 and Σ q·x = 256 A − 384 X. The cancellation costs a few
// bits of float32, far below the bf16 output's rounding.
#include <algorithm>
#include <cstdint>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

// Elements of a 16-byte piece of a packed row.
template <QuantFormat Format>
constexpr int kPieceElements = Format == QuantFormat::Int8 ? 16 : 32;

constexpr int kQuantWarps = 8;
// Rows each warp takes at once: they share the lane's loads of x from shared memory.
constexpr int kQuantRows = 2;
// 16-byte pieces of each row a lane has in flight.
constexpr int kQuantPieces = 4;

// The value f = 1 + q / 2^bits of element j of a packed 32-bit word: int8 bytes (q + 128 after
// the caller's xor with 0x80808080) or int4 nibbles, moved into the top mantissa bits of 1.0f.
template <QuantFormat Format>
__device__ __forceinline__ float unit_value(std::uint32_t word, int j) {
  if constexpr (Format == QuantFormat::Int8) {
    const int shift = 15 - 8 * j;  // byte j's bits 8j.. to mantissa bits 15..22
    const std::uint32_t bits = shift >= 0 ? word << shift : word >> -shift;
    return __uint_as_float((bits & 0x007F8000u) | 0x3F800000u);
  } else {
    const int shift = 19 - 4 * j;  // nibble j's bits 4j.. to mantissa bits 19..22
    const std::uint32_t bits = shift >= 0 ? word << shift : word >> -shift;
    return __uint_as_float((bits & 0x00780000u) | 0x3F800000u);
  }
}

// Shared memory of a block: x of up to `tokens` rows as float32, the elements of each 16-byte
// piece of a packed row in groups of four interleaved across pieces (element e of piece p at
// ((e / 4) · pieces + p) · 4 + e % 4: the lanes of a warp, on consecutive pieces, read
// consecutive float4s), then X, the sum of each piece's x, per token.
template <QuantFormat Format>
struct QuantShared {
  static constexpr int E = kPieceElements<Format>;
  float* x;
  float* piece_sums;
  std::int64_t pieces;

  __device__ QuantShared(float* base, std::int64_t pieces_per_row, int tokens)
      : x(base), piece_sums(base + tokens * pieces_per_row * E), pieces(pieces_per_row) {}
  __device__ std::int64_t at(int token, std::int64_t element) const {
    const std::int64_t piece = element / E, e = element % E;
    return token * pieces * E + ((e / 4) * pieces + piece) * 4 + e % 4;
  }
  static std::size_t bytes(std::int64_t pieces_per_row, int tokens) {
    return static_cast<std::size_t>(tokens * pieces_per_row * (E + 1)) * sizeof(float);
  }
};

// Grid (row blocks, work items): a work item is up to Tokens rows of one expert (the expert's
// rows in chunks of Tokens, items in expert order). The block puts its rows of x in shared memory
// (gated: silu(gate) ⊙ up), then each warp takes kQuantRows output rows at a time: each lane
// streams kQuantPieces 16-byte pieces of each row at once (read once: no caching), decodes each
// piece once for all the tokens, then a warp sum per (row, token).
template <QuantFormat Format, int Tokens, bool Gated>
__global__ void __launch_bounds__(kQuantWarps * 32)
    quantized_gemv_kernel(QuantizedExperts w, const std::int32_t* first_row, int experts, const bf16* x, bf16* out) {
  constexpr int E = kPieceElements<Format>;
  extern __shared__ __align__(16) float shared[];
  // This block's item: the expert and its rows.
  int item = blockIdx.y, expert = -1;
  std::int64_t first = 0;
  int tokens = 0;
  for (int e = 0; e < experts; ++e) {
    const int count = first_row[e + 1] - first_row[e];
    const int chunks = (count + Tokens - 1) / Tokens;
    if (item < chunks) {
      expert = e;
      first = first_row[e] + std::int64_t{item} * Tokens;
      tokens = min(Tokens, count - item * Tokens);
      break;
    }
    item -= chunks;
  }
  if (expert < 0) return;  // the grid is planned for the most items the rows can make

  const std::int64_t in = w.cols, row_bytes = w.row_bytes(), pieces = row_bytes / 16;
  const std::int64_t padded = pieces * E;
  const QuantShared<Format> s(shared, pieces, tokens);
  const std::int64_t x_width = Gated ? 2 * in : in;
  for (int t = 0; t < tokens; ++t) {
    const bf16* row = x + (first + t) * x_width;
    for (std::int64_t c = threadIdx.x; c < padded; c += blockDim.x) {
      float v = 0.0f;  // the padding's x is 0: the padding's q (0) adds nothing
      if (c < in) v = Gated ? silu_f(load(row + c)) * load(row + in + c) : load(row + c);
      s.x[s.at(t, c)] = v;
    }
  }
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < tokens * pieces; i += blockDim.x) {
    const int t = static_cast<int>(i / pieces);
    const std::int64_t p = i % pieces;
    float sum = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) sum += s.x[s.at(t, p * E + e)];
    s.piece_sums[i] = sum;
  }
  __syncthreads();

  const std::int64_t out_rows = w.rows, groups = w.groups();
  const std::uint8_t* packed = w.packed + std::int64_t{expert} * out_rows * row_bytes;
  const int lane = threadIdx.x % 32;
  const std::int64_t row_step = std::int64_t{gridDim.x} * kQuantWarps * kQuantRows;
  for (std::int64_t row0 = (std::int64_t{blockIdx.x} * kQuantWarps + threadIdx.x / 32) * kQuantRows; row0 < out_rows;
       row0 += row_step) {
    float acc[kQuantRows][Tokens] = {};
    for (std::int64_t p0 = lane; p0 < pieces; p0 += 32 * kQuantPieces) {
      uint4 piece[kQuantRows][kQuantPieces];
      // Per piece: Σ q·x = k_a A + k_x X (int4 with its group's scale and offset folded in; int8
      // before the row's scale).
      float k_a[kQuantRows][kQuantPieces], k_x[kQuantRows][kQuantPieces];
#pragma unroll
      for (int r = 0; r < kQuantRows; ++r) {
        const std::int64_t row = row0 + r;
#pragma unroll
        for (int p = 0; p < kQuantPieces; ++p) {
          const std::int64_t at = p0 + 32 * p;
          const bool valid = row < out_rows && at < pieces;
          piece[r][p] = valid ? __ldcs(reinterpret_cast<const uint4*>(packed + row * row_bytes) + at)
                              : make_uint4(0, 0, 0, 0);
          if constexpr (Format == QuantFormat::Int8) {
            k_a[r][p] = 256.0f;
            k_x[r][p] = -384.0f;
          } else {
            // A piece of 32 elements lies in one group of 128.
            const std::int64_t scale_at = (std::int64_t{expert} * out_rows + row) * groups + at * E / kInt4Group;
            const float scale = valid ? __half2float(w.group_scales[scale_at]) : 0.0f;
            const float offset = valid ? __half2float(w.group_offsets[scale_at]) : 0.0f;
            k_a[r][p] = 16.0f * scale;
            k_x[r][p] = offset - 16.0f * scale;
          }
        }
      }
#pragma unroll
      for (int p = 0; p < kQuantPieces; ++p) {
        const std::int64_t at = p0 + 32 * p;
        if (at >= pieces) continue;
        float a[kQuantRows][Tokens] = {};
#pragma unroll
        for (int word = 0; word < 4; ++word) {
          std::uint32_t bits[kQuantRows];
#pragma unroll
          for (int r = 0; r < kQuantRows; ++r) {
            const std::uint32_t packed_word = reinterpret_cast<const std::uint32_t*>(&piece[r][p])[word];
            bits[r] = Format == QuantFormat::Int8 ? packed_word ^ 0x80808080u : packed_word;
          }
          constexpr int kPerWord = E / 4;  // elements of a 32-bit word: 4 bytes or 8 nibbles
#pragma unroll
          for (int j = 0; j < kPerWord; j += 4) {
            // Elements word · kPerWord + j .. + 3: one float4 of x per token.
            float f[kQuantRows][4];
#pragma unroll
            for (int r = 0; r < kQuantRows; ++r)
#pragma unroll
              for (int e = 0; e < 4; ++e) f[r][e] = unit_value<Format>(bits[r], j + e);
            const std::int64_t element = at * E + word * kPerWord + j;
#pragma unroll
            for (int t = 0; t < Tokens; ++t) {
              if (t >= tokens) break;
              const float4 xs = *reinterpret_cast<const float4*>(&s.x[s.at(t, element)]);
#pragma unroll
              for (int r = 0; r < kQuantRows; ++r) {
                a[r][t] = fmaf(f[r][0], xs.x, a[r][t]);
                a[r][t] = fmaf(f[r][1], xs.y, a[r][t]);
                a[r][t] = fmaf(f[r][2], xs.z, a[r][t]);
                a[r][t] = fmaf(f[r][3], xs.w, a[r][t]);
              }
            }
          }
        }
#pragma unroll
        for (int t = 0; t < Tokens; ++t) {
          if (t >= tokens) break;
          const float sum = s.piece_sums[t * pieces + at];
#pragma unroll
          for (int r = 0; r < kQuantRows; ++r) acc[r][t] += k_a[r][p] * a[r][t] + k_x[r][p] * sum;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kQuantRows; ++r) {
      const std::int64_t row = row0 + r;
      const float row_scale =
          Format == QuantFormat::Int8 && row < out_rows ? w.row_scales[std::int64_t{expert} * out_rows + row] : 1.0f;
#pragma unroll
      for (int t = 0; t < Tokens; ++t) {
        if (t >= tokens) break;
        const float total = warp_sum(acc[r][t]);
        if (lane == 0 && row < out_rows) store(out + (first + t) * out_rows + row, total * row_scale);
      }
    }
  }
}

template <QuantFormat Format, int Tokens>
auto gemv_kernel(bool gated) {
  return gated ? quantized_gemv_kernel<Format, Tokens, true> : quantized_gemv_kernel<Format, Tokens, false>;
}

template <QuantFormat Format>
auto gemv_kernel(int tokens, bool gated) {
  switch (tokens) {
    case 1: return gemv_kernel<Format, 1>(gated);
    case 2: return gemv_kernel<Format, 2>(gated);
    default: return gemv_kernel<Format, kMaxQuantGemvTokens>(gated);
  }
}

// One thread per 16-byte piece of a packed row: its elements as T (those before cols).
template <QuantFormat Format, typename T>
__global__ void dequantize_kernel(QuantizedExperts w, int first_expert, std::int64_t total_pieces, T* out) {
  constexpr int E = kPieceElements<Format>;
  const std::int64_t pieces = w.row_bytes() / 16, groups = w.groups();
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < total_pieces;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t row = i / pieces, piece = i % pieces;  // row counts from first_expert's first
    const std::int64_t source_row = std::int64_t{first_expert} * w.rows + row;
    const uint4 bits = *(reinterpret_cast<const uint4*>(w.packed + source_row * w.row_bytes()) + piece);
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(&bits);
    float scale, offset = 0.0f;
    if constexpr (Format == QuantFormat::Int8) {
      scale = w.row_scales[source_row];
    } else {
      const std::int64_t at = source_row * groups + piece * E / kInt4Group;
      scale = __half2float(w.group_scales[at]);
      offset = __half2float(w.group_offsets[at]);
    }
    T* to = out + row * w.cols;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const std::int64_t c = piece * E + e;
      if (c >= w.cols) break;
      if constexpr (Format == QuantFormat::Int8)
        store(to + c, static_cast<float>(static_cast<std::int8_t>(bytes[e])) * scale);
      else
        store(to + c, static_cast<float>((bytes[e / 2] >> (4 * (e % 2))) & 0xF) * scale + offset);
    }
  }
}

// The largest finite fp16.
constexpr float kMaxHalf = 65504.0f;

// round-half-away-from-zero, as core's quantizer rounds.
__device__ __forceinline__ float round_away(float v) { return roundf(v); }

// int8: one block per row; the row's absolute maximum, then q per byte of the padded row.
template <typename T>
__global__ void quantize_int8_kernel(const T* weights, std::int64_t rows, QuantizedExperts to) {
  const std::int64_t cols = to.cols, row_bytes = to.row_bytes();
  auto* packed = const_cast<std::uint8_t*>(to.packed);
  auto* scales = const_cast<float*>(to.row_scales);
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* w = weights + row * cols;
    float absmax = 0.0f;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) absmax = fmaxf(absmax, fabsf(load(w + c)));
    // The block's maximum: a warp's, then the warps' through shared memory.
    __shared__ float warp_max_of[kThreads / 32];
    absmax = warp_max(absmax);
    __syncthreads();  // the previous row's maxima are read
    if (threadIdx.x % 32 == 0) warp_max_of[threadIdx.x / 32] = absmax;
    __syncthreads();
    for (unsigned i = 0; i < blockDim.x / 32; ++i) absmax = fmaxf(absmax, warp_max_of[i]);
    const float scale = absmax / 127.0f;
    if (threadIdx.x == 0) scales[row] = scale;
    for (std::int64_t c = threadIdx.x; c < row_bytes; c += blockDim.x) {
      float q = 0.0f;
      if (c < cols && scale > 0.0f) q = fminf(fmaxf(round_away(load(w + c) / scale), -127.0f), 127.0f);
      packed[row * row_bytes + c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
    }
  }
}

// int4: one warp per (row, group of 128): four elements a lane, the group's range by warp
// reductions, the fp16 scale and offset, then the lane's four nibbles as two bytes (those before
// the row's padded end; the elements past cols are 0).
template <typename T>
__global__ void quantize_int4_kernel(const T* weights, std::int64_t rows, QuantizedExperts to, bool symmetric) {
  const std::int64_t cols = to.cols, row_bytes = to.row_bytes(), groups = to.groups();
  auto* packed = const_cast<std::uint8_t*>(to.packed);
  auto* scales = const_cast<__half*>(to.group_scales);
  auto* offsets = const_cast<__half*>(to.group_offsets);
  const int lane = threadIdx.x % 32;
  const std::int64_t warps = std::int64_t{gridDim.x} * (blockDim.x / 32);
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x / 32} + threadIdx.x / 32; i < rows * groups;
       i += warps) {
    const std::int64_t row = i / groups, group = i % groups;
    const std::int64_t first = group * kInt4Group + 4 * lane;
    float v[4];
    float low = INFINITY, high = -INFINITY, absmax = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool inside = first + e < cols;
      v[e] = inside ? load(weights + row * cols + first + e) : 0.0f;
      if (inside) {
        low = fminf(low, v[e]);
        high = fmaxf(high, v[e]);
        absmax = fmaxf(absmax, fabsf(v[e]));
      }
    }
    low = -warp_max(-low);
    high = warp_max(high);
    absmax = warp_max(absmax);
    // Saturated at fp16's largest (a symmetric scale at an eighth of it, so -8 · scale stays
    // finite); a symmetric group of zeros has offset 0.
    const __half scale_h =
        __float2half_rn(symmetric ? fminf(absmax / 7.0f, kMaxHalf / 8.0f) : fminf((high - low) / 15.0f, kMaxHalf));
    const float scale = __half2float(scale_h);
    const __half offset_h = __float2half_rn(symmetric ? (scale > 0.0f ? -8.0f * scale : 0.0f)
                                                      : fminf(fmaxf(low, -kMaxHalf), kMaxHalf));
    const float offset = __half2float(offset_h);
    if (lane == 0) {
      scales[i] = scale_h;
      offsets[i] = offset_h;
    }
    unsigned nibbles[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float q;
      if (symmetric)
        q = scale > 0.0f ? fminf(fmaxf(round_away(v[e] / scale) + 8.0f, 1.0f), 15.0f) : 8.0f;
      else
        q = scale > 0.0f ? fminf(fmaxf(round_away((v[e] - offset) / scale), 0.0f), 15.0f) : 0.0f;
      nibbles[e] = first + e < cols ? static_cast<unsigned>(q) : 0u;
    }
    const std::int64_t byte = first / 2;
    std::uint8_t* to_row = packed + row * row_bytes;
    if (byte < row_bytes) to_row[byte] = static_cast<std::uint8_t>(nibbles[0] | nibbles[1] << 4);
    if (byte + 1 < row_bytes) to_row[byte + 1] = static_cast<std::uint8_t>(nibbles[2] | nibbles[3] << 4);
  }
}

template <QuantFormat Format>
void allow_gemv_shared_memory(int optin) {
  for (int tokens : {1, 2, kMaxQuantGemvTokens})
    for (bool gated : {false, true})
      check(cudaFuncSetAttribute(gemv_kernel<Format>(tokens, gated), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 optin),
            "quantized_expert_gemv (shared memory)");
}

void check_quantized(const QuantizedExperts& w, const char* what) {
  if (w.rows <= 0 || w.cols <= 0 || !w.packed ||
      (w.format == QuantFormat::Int8 ? !w.row_scales : !w.group_scales || !w.group_offsets))
    fail(std::string(what) + ": quantized experts of " + std::to_string(w.rows) + " x " + std::to_string(w.cols) +
         " without their packed rows or scales");
}

}  // namespace

void query_quantized_moe_limits(LaunchLimits& limits) {
  allow_gemv_shared_memory<QuantFormat::Int8>(limits.shared_bytes_per_block_optin);
  allow_gemv_shared_memory<QuantFormat::Int4>(limits.shared_bytes_per_block_optin);
  // The most registers of the instantiations: int4 with the most tokens, gated.
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.quantized_gemv_blocks,
                                                      gemv_kernel<QuantFormat::Int4>(kMaxQuantGemvTokens, true),
                                                      kQuantWarps * 32, 0),
        "quantized_expert_gemv (occupancy)");
}

void quantized_expert_gemv(const QuantizedExperts& w, const std::int32_t* first_row, int experts, const bf16* x,
                           bool gated, std::int64_t rows, std::int64_t max_rows_per_expert, bf16* out,
                           const LaunchLimits& limits, cudaStream_t stream) {
  if (rows == 0 || experts == 0) return;
  check_quantized(w, "quantized_expert_gemv");
  // Tokens per block: the most an expert can have, up to the kernel's most, and what shared
  // memory holds.
  const int optin = limits.shared_bytes_per_block_optin;
  const std::int64_t pieces = w.row_bytes() / 16;
  const auto shared_bytes = [&](int tokens) {
    return w.format == QuantFormat::Int8 ? QuantShared<QuantFormat::Int8>::bytes(pieces, tokens)
                                         : QuantShared<QuantFormat::Int4>::bytes(pieces, tokens);
  };
  int tokens = max_rows_per_expert >= kMaxQuantGemvTokens ? kMaxQuantGemvTokens
               : max_rows_per_expert >= 2                 ? 2
                                                          : 1;
  while (tokens > 1 && shared_bytes(tokens) > static_cast<std::size_t>(optin)) tokens /= 2;
  if (shared_bytes(tokens) > static_cast<std::size_t>(optin))
    fail("quantized_expert_gemv: rows of " + std::to_string(w.cols) + " inputs need " +
         std::to_string(shared_bytes(tokens)) + " bytes of shared memory, the device has " + std::to_string(optin));
  // Items: each expert's rows in chunks of `tokens`; at most one partial chunk per expert with rows.
  const std::int64_t items = std::min<std::int64_t>(experts, rows) + rows / tokens;
  if (items > 65535) fail("quantized_expert_gemv: " + std::to_string(rows) + " rows are too many for a GEMV");
  const auto bytes = static_cast<int>(shared_bytes(tokens));
  const int blocks_per_multiprocessor = std::max(
      1, std::min(limits.quantized_gemv_blocks,
                  limits.shared_bytes_per_multiprocessor / (bytes + limits.reserved_shared_bytes_per_block)));
  const std::int64_t resident = std::int64_t{blocks_per_multiprocessor} * limits.multiprocessors;
  const std::int64_t row_blocks = std::clamp<std::int64_t>(
      resident / items, 1, (w.rows + kQuantWarps * kQuantRows - 1) / (kQuantWarps * kQuantRows));
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(items));
  const auto kernel = w.format == QuantFormat::Int8 ? gemv_kernel<QuantFormat::Int8>(tokens, gated)
                                                    : gemv_kernel<QuantFormat::Int4>(tokens, gated);
  kernel<<<grid, kQuantWarps * 32, bytes, stream>>>(w, first_row, experts, x, out);
  check(cudaGetLastError(), "quantized_expert_gemv");
}

template <typename T>
void dequantize_experts(const QuantizedExperts& w, int first_expert, int count, T* out, cudaStream_t stream) {
  if (count == 0) return;
  check_quantized(w, "dequantize_experts");
  const std::int64_t total = std::int64_t{count} * w.rows * (w.row_bytes() / 16);
  const auto kernel = w.format == QuantFormat::Int8 ? dequantize_kernel<QuantFormat::Int8, T>
                                                    : dequantize_kernel<QuantFormat::Int4, T>;
  kernel<<<grid_for(total), kThreads, 0, stream>>>(w, first_expert, total, out);
  check(cudaGetLastError(), "dequantize_experts");
}

template <typename T>
void quantize_experts(const T* weights, int experts, const QuantizedExperts& to, bool int4_symmetric,
                      cudaStream_t stream) {
  if (experts == 0) return;
  check_quantized(to, "quantize_experts");
  const std::int64_t rows = std::int64_t{experts} * to.rows;
  if (to.format == QuantFormat::Int8) {
    quantize_int8_kernel<T><<<grid_for(rows, 1), kThreads, 0, stream>>>(weights, rows, to);
  } else {
    constexpr int kWarps = kThreads / 32;
    quantize_int4_kernel<T><<<grid_for(rows * to.groups(), kWarps), kThreads, 0, stream>>>(weights, rows, to,
                                                                                           int4_symmetric);
  }
  check(cudaGetLastError(), "quantize_experts");
}

#define LIGHTDESK_INSTANTIATE(T)                                                                                \
  template void dequantize_experts<T>(const QuantizedExperts&, int, int, T*, cudaStream_t);                     \
  template void quantize_experts<T>(const T*, int, const QuantizedExperts&, bool, cudaStream_t);
LIGHTDESK_FOR_EACH_ACTIVATION(LIGHTDESK_INSTANTIATE)
#undef LIGHTDESK_INSTANTIATE

}  // namespace lightdesk::cuda
