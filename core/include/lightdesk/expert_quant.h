// Quantized expert matrices (int8, int4): the canonical layout the CPU backend computes with, the
// on-disk quantized cache stores and the GPU backends repack from. The formats:
//
// int8, symmetric per row: q[r][c] int8 in [-127, 127], scale[r] float32 = max_c |w[r][c]| / 127,
// w ~= q * scale[r], q = round-half-away-from-zero(w / scale) clamped to [-127, 127]; a row of
// zeros has scale 0 and q 0. Rows of round_up(cols, 16) bytes, padding 0.
//
// int4, group-wise along the columns (kInt4GroupSize, the last group partial): per (row, group)
// an fp16 scale and an fp16 offset, w ~= q * scale + offset with q an unsigned nibble 0..15.
//   symmetric:  scale = absmax / 7, offset = -8 * scale, q = clamp(round(w / scale) + 8, 1, 15)
//   asymmetric: scale = (max - min) / 15, offset = min, q = clamp(round((w - offset) / scale), 0, 15)
// Both decode alike, so a kernel need not know which one made the weights. q is computed with
// the scale and offset as rounded to fp16 (what decoding reads); a scale that rounds to 0 gives
// q = 8 (symmetric) or 0 (asymmetric) and the offset carries the value. Element c of row r is in
// byte r * row_stride + c / 2, the low nibble for even c; rows of round_up(ceil(cols / 2), 16)
// bytes, padding 0. Scales and offsets are [rows][groups] fp16, row-major.
//
// Rows are output channels and columns the input dimension, as the checkpoint stores them
// (w1, w3: [width, hidden]; w2: [hidden, width]). Quantizing computes in float32 with the
// operations written above, so another implementation (a GPU quantizer) can match it bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "lightdesk/safetensors.h"
#include "lightdesk/thread_pool.h"

namespace lightdesk {

// How a model's expert matrices are kept: as the checkpoint's floats (bf16 on a GPU, float32 on
// the CPU) or quantized.
enum class ExpertDType : std::uint8_t { BF16, Int8, Int4 };
const char* expert_dtype_name(ExpertDType dtype);  // "bf16", "int8", "int4"
std::optional<ExpertDType> parse_expert_dtype(std::string_view name);

// Which int4 scales and offsets the quantizer picks (decoding is the same for both).
enum class Int4Variant : std::uint8_t { Symmetric, Asymmetric };
const char* int4_variant_name(Int4Variant variant);  // "sym", "asym"

constexpr std::int64_t kInt4GroupSize = 128;
constexpr std::int64_t kQuantRowAlignment = 16;  // bytes: kernels read whole 16-byte pieces

// The sizes of a quantized [rows, cols] matrix (dtype Int8 or Int4).
struct QuantLayout {
  ExpertDType dtype = ExpertDType::Int8;
  std::int64_t rows = 0;
  std::int64_t cols = 0;

  std::int64_t row_stride() const;  // bytes of a packed row, padding included
  std::int64_t groups() const;      // scales per row: 1 (int8) or ceil(cols / 128) (int4)
  std::int64_t packed_bytes() const { return rows * row_stride(); }
  std::int64_t scale_bytes() const;   // float32 [rows] (int8) or fp16 [rows][groups] (int4)
  std::int64_t offset_bytes() const;  // 0 (int8) or fp16 [rows][groups] (int4)
  std::int64_t total_bytes() const { return packed_bytes() + scale_bytes() + offset_bytes(); }
};

// The bytes a [rows, cols] expert matrix takes in `dtype` (2 per element for bf16).
std::int64_t expert_matrix_bytes(ExpertDType dtype, std::int64_t rows, std::int64_t cols);

// A quantized matrix somewhere in memory (owned by a QuantizedMatrix, in a mapped file, on a
// device).
struct QuantizedView {
  QuantLayout layout;
  const std::uint8_t* packed = nullptr;
  const float* row_scales = nullptr;            // int8
  const std::uint16_t* group_scales = nullptr;  // int4, fp16 bits
  const std::uint16_t* group_offsets = nullptr;  // int4, fp16 bits

  // Rows first .. first + count - 1: a matrix of its own (rows are independent in both formats).
  QuantizedView rows(std::int64_t first, std::int64_t count) const;
};

class QuantizedMatrix {
 public:
  QuantizedMatrix() = default;
  // Zeroed storage of `layout` (padding stays 0).
  explicit QuantizedMatrix(const QuantLayout& layout);

  const QuantLayout& layout() const { return layout_; }
  QuantizedView view() const;
  std::vector<std::uint8_t>& packed() { return packed_; }
  std::vector<float>& row_scales() { return row_scales_; }
  std::vector<std::uint16_t>& group_scales() { return group_scales_; }
  std::vector<std::uint16_t>& group_offsets() { return group_offsets_; }
  const std::vector<std::uint8_t>& packed() const { return packed_; }
  const std::vector<float>& row_scales() const { return row_scales_; }
  const std::vector<std::uint16_t>& group_scales() const { return group_scales_; }
  const std::vector<std::uint16_t>& group_offsets() const { return group_offsets_; }

 private:
  QuantLayout layout_;
  std::vector<std::uint8_t> packed_;
  std::vector<float> row_scales_;
  std::vector<std::uint16_t> group_scales_, group_offsets_;
};

// Quantizes the row-major [rows, cols] matrix at `data` of `dtype` (F32, BF16 or F16) into
// `to` (Int8 or Int4), the rows spread over `pool` when given. Throws Error naming the row and
// column of a value that is not finite.
QuantizedMatrix quantize_matrix(const std::byte* data, DType dtype, std::int64_t rows, std::int64_t cols,
                                ExpertDType to, Int4Variant variant, ThreadPool* pool = nullptr);
// The same into rows first_row .. first_row + rows - 1 of `into` (whose cols it must have): a
// block of several matrices quantized one after another.
void quantize_rows(const std::byte* data, DType dtype, std::int64_t rows, std::int64_t first_row, Int4Variant variant,
                   QuantizedMatrix& into, ThreadPool* pool = nullptr);

// One float32 row of `cols` values into row `row` of `m` (sized by its layout).
void quantize_row(const float* values, std::int64_t row, Int4Variant variant, QuantizedMatrix& m);

// The rows of `parts` (all of one format and width) one after another, copied.
QuantizedMatrix concat_rows(std::span<const QuantizedView> parts);
// Columns first .. first + count - 1 of every row, copied: int8 any, int4 from a group's start
// (a multiple of 128), its groups' scales and offsets kept. Throws Error for an int4 start
// inside a group.
QuantizedMatrix quantized_columns(const QuantizedView& m, std::int64_t first, std::int64_t count);

// Row `row` of a quantized matrix as float32 (layout.cols values).
void dequantize_row(const QuantizedView& m, std::int64_t row, float* out);
// The whole matrix as float32 [rows, cols].
std::vector<float> dequantize(const QuantizedView& m);

}  // namespace lightdesk
