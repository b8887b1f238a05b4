#include "lightdesk/expert_quant.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "lightdesk/bf16.h"
#include "lightdesk/error.h"

namespace lightdesk {
namespace {

constexpr std::int64_t round_up(std::int64_t value, std::int64_t to) { return (value + to - 1) / to * to; }

// The largest finite fp16. Scales and offsets saturate there (weights far beyond any model's);
// a symmetric scale stops at an eighth of it so that its offset, -8 * scale, stays finite.
constexpr float kMaxHalf = 65504.0f;
constexpr float kMaxSymmetricScale = kMaxHalf / 8.0f;

float round_to_half(float value, std::uint16_t& bits) {
  bits = f32_to_f16(value);
  return f16_to_f32(bits);
}

void quantize_int8_row(const float* w, std::int64_t cols, std::uint8_t* q, float& scale) {
  float absmax = 0.0f;
  for (std::int64_t c = 0; c < cols; ++c) absmax = std::max(absmax, std::fabs(w[c]));
  scale = absmax / 127.0f;
  if (scale == 0.0f) return;  // q stays 0
  for (std::int64_t c = 0; c < cols; ++c) {
    const float v = std::clamp(std::round(w[c] / scale), -127.0f, 127.0f);
    q[c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(v));
  }
}

void set_nibble(std::uint8_t* row, std::int64_t c, int value) {
  std::uint8_t& byte = row[c / 2];
  byte = (c % 2 == 0) ? static_cast<std::uint8_t>((byte & 0xF0u) | value)
                      : static_cast<std::uint8_t>((byte & 0x0Fu) | (value << 4));
}

int nibble(const std::uint8_t* row, std::int64_t c) { return (c % 2 == 0) ? (row[c / 2] & 0x0F) : (row[c / 2] >> 4); }

void quantize_int4_group(const float* w, std::int64_t first, std::int64_t last, Int4Variant variant,
                         std::uint8_t* q, std::uint16_t& scale_bits, std::uint16_t& offset_bits) {
  if (variant == Int4Variant::Symmetric) {
    float absmax = 0.0f;
    for (std::int64_t c = first; c < last; ++c) absmax = std::max(absmax, std::fabs(w[c]));
    const float scale = round_to_half(std::min(absmax / 7.0f, kMaxSymmetricScale), scale_bits);
    if (scale == 0.0f) {
      offset_bits = 0;
      for (std::int64_t c = first; c < last; ++c) set_nibble(q, c, 8);
      return;
    }
    offset_bits = f32_to_f16(-8.0f * scale);
    for (std::int64_t c = first; c < last; ++c)
      set_nibble(q, c, static_cast<int>(std::clamp(std::round(w[c] / scale) + 8.0f, 1.0f, 15.0f)));
    return;
  }
  float low = w[first], high = w[first];
  for (std::int64_t c = first; c < last; ++c) {
    low = std::min(low, w[c]);
    high = std::max(high, w[c]);
  }
  const float scale = round_to_half(std::min((high - low) / 15.0f, kMaxHalf), scale_bits);
  const float offset = round_to_half(std::clamp(low, -kMaxHalf, kMaxHalf), offset_bits);
  for (std::int64_t c = first; c < last; ++c)
    set_nibble(q, c,
               scale == 0.0f ? 0 : static_cast<int>(std::clamp(std::round((w[c] - offset) / scale), 0.0f, 15.0f)));
}

}  // namespace

const char* expert_dtype_name(ExpertDType dtype) {
  switch (dtype) {
    case ExpertDType::BF16: return "bf16";
    case ExpertDType::Int8: return "int8";
    case ExpertDType::Int4: return "int4";
  }
  return "?";
}

std::optional<ExpertDType> parse_expert_dtype(std::string_view name) {
  for (ExpertDType d : {ExpertDType::BF16, ExpertDType::Int8, ExpertDType::Int4})
    if (name == expert_dtype_name(d)) return d;
  return std::nullopt;
}

const char* int4_variant_name(Int4Variant variant) { return variant == Int4Variant::Symmetric ? "sym" : "asym"; }

std::int64_t QuantLayout::row_stride() const {
  return round_up(dtype == ExpertDType::Int4 ? (cols + 1) / 2 : cols, kQuantRowAlignment);
}
std::int64_t QuantLayout::groups() const {
  return dtype == ExpertDType::Int4 ? (cols + kInt4GroupSize - 1) / kInt4GroupSize : 1;
}
std::int64_t QuantLayout::scale_bytes() const { return dtype == ExpertDType::Int4 ? rows * groups() * 2 : rows * 4; }
std::int64_t QuantLayout::offset_bytes() const { return dtype == ExpertDType::Int4 ? rows * groups() * 2 : 0; }

std::int64_t expert_matrix_bytes(ExpertDType dtype, std::int64_t rows, std::int64_t cols) {
  if (dtype == ExpertDType::BF16) return rows * cols * 2;
  return QuantLayout{dtype, rows, cols}.total_bytes();
}

QuantizedMatrix::QuantizedMatrix(const QuantLayout& layout) : layout_(layout) {
  if (layout.dtype == ExpertDType::BF16) throw Error("internal: a QuantizedMatrix is int8 or int4");
  packed_.assign(static_cast<std::size_t>(layout.packed_bytes()), 0);
  if (layout.dtype == ExpertDType::Int8) {
    row_scales_.assign(static_cast<std::size_t>(layout.rows), 0.0f);
  } else {
    group_scales_.assign(static_cast<std::size_t>(layout.rows * layout.groups()), 0);
    group_offsets_.assign(group_scales_.size(), 0);
  }
}

QuantizedView QuantizedMatrix::view() const {
  return {layout_, packed_.data(), row_scales_.empty() ? nullptr : row_scales_.data(),
          group_scales_.empty() ? nullptr : group_scales_.data(),
          group_offsets_.empty() ? nullptr : group_offsets_.data()};
}

void quantize_row(const float* values, std::int64_t row, Int4Variant variant, QuantizedMatrix& m) {
  const QuantLayout& layout = m.layout();
  std::uint8_t* q = m.packed().data() + row * layout.row_stride();
  if (layout.dtype == ExpertDType::Int8) {
    quantize_int8_row(values, layout.cols, q, m.row_scales()[static_cast<std::size_t>(row)]);
    return;
  }
  const std::int64_t groups = layout.groups();
  for (std::int64_t g = 0; g < groups; ++g) {
    const auto at = static_cast<std::size_t>(row * groups + g);
    quantize_int4_group(values, g * kInt4GroupSize, std::min(layout.cols, (g + 1) * kInt4GroupSize), variant, q,
                        m.group_scales()[at], m.group_offsets()[at]);
  }
}

void quantize_rows(const std::byte* data, DType dtype, std::int64_t rows, std::int64_t first_row, Int4Variant variant,
                   QuantizedMatrix& into, ThreadPool* pool) {
  if (dtype == DType::I64 || dtype == DType::U8) throw Error("internal: only float matrices are quantized");
  const std::int64_t cols = into.layout().cols;
  if (first_row < 0 || first_row + rows > into.layout().rows)
    throw Error("internal: rows " + std::to_string(first_row) + "+" + std::to_string(rows) + " outside a matrix of " +
                std::to_string(into.layout().rows));
  const std::int64_t row_bytes = cols * static_cast<std::int64_t>(dtype_size(dtype));
  // Blocks of rows: each a worker's item, with one row's float32 buffer.
  constexpr std::int64_t kRowsPerItem = 16;
  const std::int64_t items = (rows + kRowsPerItem - 1) / kRowsPerItem;
  auto quantize_item = [&](std::int64_t item) {
    std::vector<float> values(static_cast<std::size_t>(cols));
    for (std::int64_t r = item * kRowsPerItem; r < std::min(rows, (item + 1) * kRowsPerItem); ++r) {
      convert_to_f32(data + r * row_bytes, dtype, cols, values.data());
      const auto bad = std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
      if (bad != values.end())
        throw Error("a non-finite value (" + std::to_string(*bad) + ") at row " + std::to_string(r) + ", column " +
                    std::to_string(bad - values.begin()));
      quantize_row(values.data(), first_row + r, variant, into);
    }
  };
  if (pool)
    pool->parallel_for(items, quantize_item);
  else
    for (std::int64_t item = 0; item < items; ++item) quantize_item(item);
}

QuantizedMatrix quantize_matrix(const std::byte* data, DType dtype, std::int64_t rows, std::int64_t cols,
                                ExpertDType to, Int4Variant variant, ThreadPool* pool) {
  QuantizedMatrix m(QuantLayout{to, rows, cols});
  quantize_rows(data, dtype, rows, 0, variant, m, pool);
  return m;
}

QuantizedView QuantizedView::rows(std::int64_t first, std::int64_t count) const {
  QuantizedView v = *this;
  v.layout.rows = count;
  v.packed += first * layout.row_stride();
  const std::int64_t groups = layout.groups();
  if (row_scales) v.row_scales += first;
  if (group_scales) v.group_scales += first * groups;
  if (group_offsets) v.group_offsets += first * groups;
  return v;
}

QuantizedMatrix concat_rows(std::span<const QuantizedView> parts) {
  if (parts.empty()) throw Error("internal: no rows to concatenate");
  QuantLayout layout = parts.front().layout;
  layout.rows = 0;
  for (const QuantizedView& part : parts) {
    if (part.layout.dtype != layout.dtype || part.layout.cols != layout.cols)
      throw Error("internal: concatenated quantized rows of another format or width");
    layout.rows += part.layout.rows;
  }
  QuantizedMatrix m(layout);
  std::int64_t row = 0;
  const std::int64_t groups = layout.groups();
  for (const QuantizedView& part : parts) {
    const std::int64_t n = part.layout.rows;
    std::copy_n(part.packed, n * layout.row_stride(), m.packed().begin() + row * layout.row_stride());
    if (layout.dtype == ExpertDType::Int8) {
      std::copy_n(part.row_scales, n, m.row_scales().begin() + row);
    } else {
      std::copy_n(part.group_scales, n * groups, m.group_scales().begin() + row * groups);
      std::copy_n(part.group_offsets, n * groups, m.group_offsets().begin() + row * groups);
    }
    row += n;
  }
  return m;
}

QuantizedMatrix quantized_columns(const QuantizedView& m, std::int64_t first, std::int64_t count) {
  const QuantLayout& from = m.layout;
  if (first < 0 || count < 0 || first + count > from.cols)
    throw Error("internal: columns " + std::to_string(first) + "+" + std::to_string(count) + " outside a matrix of " +
                std::to_string(from.cols));
  const bool int4 = from.dtype == ExpertDType::Int4;
  if (int4 && first % kInt4GroupSize != 0)
    throw Error("int4 weights split at column " + std::to_string(first) + ", inside a group of " +
                std::to_string(kInt4GroupSize) + " columns: a split must start at a multiple of " +
                std::to_string(kInt4GroupSize));
  QuantizedMatrix out(QuantLayout{from.dtype, from.rows, count});
  const QuantLayout& to = out.layout();
  const std::int64_t from_groups = from.groups(), to_groups = to.groups(), first_group = first / kInt4GroupSize;
  for (std::int64_t r = 0; r < from.rows; ++r) {
    const std::uint8_t* src = m.packed + r * from.row_stride();
    std::uint8_t* dst = out.packed().data() + r * to.row_stride();
    if (!int4) {
      std::copy_n(src + first, count, dst);
      out.row_scales()[static_cast<std::size_t>(r)] = m.row_scales[r];
      continue;
    }
    for (std::int64_t c = 0; c < count; ++c) set_nibble(dst, c, nibble(src, first + c));
    std::copy_n(m.group_scales + r * from_groups + first_group, to_groups, out.group_scales().begin() + r * to_groups);
    std::copy_n(m.group_offsets + r * from_groups + first_group, to_groups,
                out.group_offsets().begin() + r * to_groups);
  }
  return out;
}

void dequantize_row(const QuantizedView& m, std::int64_t row, float* out) {
  const QuantLayout& layout = m.layout;
  const std::uint8_t* q = m.packed + row * layout.row_stride();
  if (layout.dtype == ExpertDType::Int8) {
    const float scale = m.row_scales[row];
    for (std::int64_t c = 0; c < layout.cols; ++c) out[c] = static_cast<float>(static_cast<std::int8_t>(q[c])) * scale;
    return;
  }
  const std::int64_t groups = layout.groups();
  for (std::int64_t g = 0; g < groups; ++g) {
    const float scale = f16_to_f32(m.group_scales[row * groups + g]);
    const float offset = f16_to_f32(m.group_offsets[row * groups + g]);
    for (std::int64_t c = g * kInt4GroupSize; c < std::min(layout.cols, (g + 1) * kInt4GroupSize); ++c)
      out[c] = static_cast<float>(nibble(q, c)) * scale + offset;
  }
}

std::vector<float> dequantize(const QuantizedView& m) {
  std::vector<float> out(static_cast<std::size_t>(m.layout.rows * m.layout.cols));
  for (std::int64_t r = 0; r < m.layout.rows; ++r) dequantize_row(m, r, out.data() + r * m.layout.cols);
  return out;
}

}  // namespace lightdesk
