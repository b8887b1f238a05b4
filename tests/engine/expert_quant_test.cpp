// The quantized expert formats (lightdesk/expert_quant.h) against float64 and against a decoding
// written here from the layout's description: sizes, padding, partial groups, zero rows, the
// error bounds each format promises, and the fp16 conversion they rest on (checked against the
// compiler's _Float16).
#include "lightdesk/expert_quant.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>

#include "lightdesk/bf16.h"

namespace lightdesk {
namespace {

TEST(Half, EveryHalfSurvivesTheRoundTrip) {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = f16_to_f32(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f, static_cast<float>(std::bit_cast<_Float16>(bits))) << std::hex << h;
    ASSERT_EQ(f32_to_f16(f), bits) << std::hex << h;
  }
}

TEST(Half, RoundsLikeTheCompiler) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> mantissa(0, 0x7FFFFF);
  std::vector<float> values = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e9f, -1e9f, 5.9604645e-8f,
                               2.9802322e-8f, 2.9802326e-8f, 6.1035156e-5f, 6.1035152e-5f};
  // Every binade from far below the subnormal halves to past the largest, random significands,
  // and each half's exact midpoints (ties).
  for (std::uint32_t exponent = 95; exponent <= 145; ++exponent)
    for (int i = 0; i < 2000; ++i) values.push_back(std::bit_cast<float>((exponent << 23) | mantissa(rng)));
  for (std::uint32_t h = 0; h < 0x7C00u; h += 7) {
    const float low = f16_to_f32(static_cast<std::uint16_t>(h)), high = f16_to_f32(static_cast<std::uint16_t>(h + 1));
    values.push_back(static_cast<float>((static_cast<double>(low) + high) / 2));
  }
  for (float v : values)
    for (float s : {v, -v})
      ASSERT_EQ(f32_to_f16(s), std::bit_cast<std::uint16_t>(static_cast<_Float16>(s))) << s;
}

TEST(ExpertQuant, LayoutSizes) {
  // int8: rows of round_up(cols, 16) bytes, one float32 scale per row.
  EXPECT_EQ((QuantLayout{ExpertDType::Int8, 3, 48}.row_stride()), 48);
  EXPECT_EQ((QuantLayout{ExpertDType::Int8, 3, 50}.row_stride()), 64);
  EXPECT_EQ((QuantLayout{ExpertDType::Int8, 3, 50}.total_bytes()), 3 * 64 + 3 * 4);
  // int4: rows of round_up(ceil(cols / 2), 16) bytes, fp16 scale and offset per 128 columns.
  EXPECT_EQ((QuantLayout{ExpertDType::Int4, 2, 48}.row_stride()), 32);
  EXPECT_EQ((QuantLayout{ExpertDType::Int4, 2, 65}.row_stride()), 48);
  EXPECT_EQ((QuantLayout{ExpertDType::Int4, 2, 256}.row_stride()), 128);
  EXPECT_EQ((QuantLayout{ExpertDType::Int4, 2, 256}.groups()), 2);
  EXPECT_EQ((QuantLayout{ExpertDType::Int4, 2, 300}.groups()), 3);
  EXPECT_EQ((QuantLayout{ExpertDType::Int4, 2, 300}.total_bytes()), 2 * 160 + 2 * 3 * 2 * 2);
  // The real model's expert: 6144 x 9216 at about a half and a quarter (plus scales) of bf16.
  EXPECT_EQ(expert_matrix_bytes(ExpertDType::BF16, 6144, 9216), 6144LL * 9216 * 2);
  EXPECT_EQ(expert_matrix_bytes(ExpertDType::Int8, 6144, 9216), 6144LL * 9216 + 6144 * 4);
  EXPECT_EQ(expert_matrix_bytes(ExpertDType::Int4, 6144, 9216), 6144LL * 4608 + 6144LL * 72 * 4);
}

TEST(ExpertQuant, Names) {
  for (ExpertDType d : {ExpertDType::BF16, ExpertDType::Int8, ExpertDType::Int4})
    EXPECT_EQ(parse_expert_dtype(expert_dtype_name(d)), d);
  EXPECT_FALSE(parse_expert_dtype("int2").has_value());
  EXPECT_FALSE(parse_expert_dtype("INT8").has_value());
}

// A random [rows, cols] matrix stored as `dtype`, and its values exactly as float64.
struct Source {
  std::vector<std::byte> bytes;
  std::vector<double> values;
};

// Gaussian values, with `outliers` a few of them 8 times larger, as trained weights have, so
// that scales differ between rows and groups.
Source make_source(DType dtype, std::int64_t rows, std::int64_t cols, unsigned seed, bool outliers = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  Source s;
  s.bytes.resize(static_cast<std::size_t>(rows * cols) * dtype_size(dtype));
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    const float v = normal(rng) * ((outliers && i % 97 == 5) ? 8.0f : 1.0f);
    float stored = v;
    if (dtype == DType::F32) {
      std::memcpy(s.bytes.data() + 4 * i, &v, 4);
    } else {
      const std::uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v) : std::bit_cast<std::uint16_t>(static_cast<_Float16>(v));
      stored = dtype == DType::BF16 ? bf16_to_f32(h) : static_cast<float>(std::bit_cast<_Float16>(h));
      std::memcpy(s.bytes.data() + 2 * i, &h, 2);
    }
    s.values.push_back(stored);
  }
  return s;
}

void zero_rows(Source& s, DType dtype, std::int64_t cols, std::initializer_list<std::int64_t> rows) {
  const std::size_t size = dtype_size(dtype);
  for (std::int64_t r : rows) {
    std::memset(s.bytes.data() + r * cols * size, 0, static_cast<std::size_t>(cols) * size);
    std::fill_n(s.values.begin() + r * cols, cols, 0.0);
  }
}

// The layout decoded from its description, independently of dequantize_row (in float32, as the
// format decodes).
float decoded(const QuantizedView& m, std::int64_t r, std::int64_t c) {
  const std::uint8_t* row = m.packed + r * m.layout.row_stride();
  if (m.layout.dtype == ExpertDType::Int8) return static_cast<float>(static_cast<std::int8_t>(row[c])) * m.row_scales[r];
  const int q = (c & 1) ? row[c >> 1] >> 4 : row[c >> 1] & 15;
  const std::int64_t at = r * m.layout.groups() + c / 128;
  return static_cast<float>(q) * f16_to_f32(m.group_scales[at]) + f16_to_f32(m.group_offsets[at]);
}

void expect_padding_zero(const QuantizedView& m) {
  const std::int64_t used = m.layout.dtype == ExpertDType::Int8 ? m.layout.cols : (m.layout.cols + 1) / 2;
  for (std::int64_t r = 0; r < m.layout.rows; ++r) {
    const std::uint8_t* row = m.packed + r * m.layout.row_stride();
    for (std::int64_t b = used; b < m.layout.row_stride(); ++b) ASSERT_EQ(row[b], 0) << "row " << r << " byte " << b;
    // An odd column count leaves the last byte's high nibble unused.
    if (m.layout.dtype == ExpertDType::Int4 && m.layout.cols % 2) {
      ASSERT_EQ(row[used - 1] >> 4, 0) << "row " << r;
    }
  }
}

struct Shape {
  std::int64_t rows, cols;
};
// The fixtures' and the demo model's input widths (48 to 96, 64, 256), several groups (300,
// 640) with a partial last one, odd widths, and widths below one 16-byte piece.
const Shape kShapes[] = {{5, 1}, {4, 7}, {6, 48}, {3, 64}, {7, 96}, {5, 129}, {9, 256}, {4, 300}, {3, 640}};

TEST(ExpertQuant, Int8RoundTripWithinHalfAStep) {
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (const Shape& shape : kShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + std::to_string(shape.rows) + "x" + std::to_string(shape.cols));
      Source s = make_source(dtype, shape.rows, shape.cols, static_cast<unsigned>(shape.cols));
      zero_rows(s, dtype, shape.cols, {1});
      const QuantizedMatrix q =
          quantize_matrix(s.bytes.data(), dtype, shape.rows, shape.cols, ExpertDType::Int8, Int4Variant::Symmetric);
      const QuantizedView v = q.view();
      expect_padding_zero(v);
      const std::vector<float> back = dequantize(v);
      for (std::int64_t r = 0; r < shape.rows; ++r) {
        double absmax = 0.0;
        for (std::int64_t c = 0; c < shape.cols; ++c) absmax = std::max(absmax, std::fabs(s.values[r * shape.cols + c]));
        const double scale = v.row_scales[r];
        EXPECT_NEAR(scale, absmax / 127.0, absmax / 127.0 * 1e-6) << "row " << r;
        bool reaches_127 = absmax == 0.0;
        for (std::int64_t c = 0; c < shape.cols; ++c) {
          const double w = s.values[r * shape.cols + c], got = back[r * shape.cols + c];
          ASSERT_EQ(got, decoded(v, r, c));
          ASSERT_LE(std::fabs(got - w), 0.5 * scale * (1 + 1e-5) + 1e-30) << "row " << r << " col " << c;
          const auto code = static_cast<std::int8_t>(v.packed[r * v.layout.row_stride() + c]);
          ASSERT_GE(code, -127);
          reaches_127 |= std::abs(code) == 127;
        }
        EXPECT_TRUE(reaches_127) << "row " << r << ": its largest weight is not at the end of the range";
        if (r == 1) {
          EXPECT_EQ(scale, 0.0) << "a zero row has scale 0";
        }
      }
    }
}

void check_int4(Int4Variant variant) {
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (const Shape& shape : kShapes) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + int4_variant_name(variant) + " " +
                   std::to_string(shape.rows) + "x" + std::to_string(shape.cols));
      Source s = make_source(dtype, shape.rows, shape.cols, static_cast<unsigned>(shape.cols) + 1);
      zero_rows(s, dtype, shape.cols, {2});
      const QuantizedMatrix q =
          quantize_matrix(s.bytes.data(), dtype, shape.rows, shape.cols, ExpertDType::Int4, variant);
      const QuantizedView v = q.view();
      ASSERT_EQ(v.layout.groups(), (shape.cols + 127) / 128);
      expect_padding_zero(v);
      const std::vector<float> back = dequantize(v);
      for (std::int64_t r = 0; r < shape.rows; ++r)
        for (std::int64_t g = 0; g < v.layout.groups(); ++g) {
          // The group's own columns only: the last one is partial.
          const std::int64_t first = g * 128, last = std::min(shape.cols, first + 128);
          double low = s.values[r * shape.cols + first], high = low, absmax = 0.0;
          for (std::int64_t c = first; c < last; ++c) {
            const double w = s.values[r * shape.cols + c];
            low = std::min(low, w);
            high = std::max(high, w);
            absmax = std::max(absmax, std::fabs(w));
          }
          const double scale = f16_to_f32(v.group_scales[r * v.layout.groups() + g]);
          const double offset = f16_to_f32(v.group_offsets[r * v.layout.groups() + g]);
          const double ideal = variant == Int4Variant::Symmetric ? absmax / 7 : (high - low) / 15;
          EXPECT_NEAR(scale, ideal, ideal * 0x1p-11 + 1e-12) << "row " << r << " group " << g;
          EXPECT_EQ(offset, variant == Int4Variant::Symmetric ? -8 * scale : static_cast<double>(f16_to_f32(f32_to_f16(static_cast<float>(low)))));
          // Half a step, plus what the fp16 rounding of scale and offset can move the range ends.
          const double bound = 0.5 * scale * (1 + 1e-5) + (high - low + std::fabs(low) + absmax) * 0x1p-10 + 1e-30;
          for (std::int64_t c = first; c < last; ++c) {
            const double w = s.values[r * shape.cols + c], got = back[r * shape.cols + c];
            ASSERT_EQ(got, decoded(v, r, c));
            ASSERT_LE(std::fabs(got - w), bound) << "row " << r << " col " << c;
            const std::uint8_t byte = v.packed[r * v.layout.row_stride() + c / 2];
            const int code = (c & 1) ? byte >> 4 : byte & 15;
            if (variant == Int4Variant::Symmetric) {
              ASSERT_GE(code, 1);
            }
          }
          if (r == 2) {
            EXPECT_EQ(scale, 0.0);
            for (std::int64_t c = first; c < last; ++c) EXPECT_EQ(back[r * shape.cols + c], 0.0f);
          }
        }
    }
}

TEST(ExpertQuant, Int4SymmetricRoundTripWithinHalfAStep) { check_int4(Int4Variant::Symmetric); }
TEST(ExpertQuant, Int4AsymmetricRoundTripWithinHalfAStep) { check_int4(Int4Variant::Asymmetric); }

// On Gaussian weights the error is what the step sizes predict: about absmax / 127 / sqrt(12)
// per element for int8 (absmax about 3.5 sigma over a row of 1024: 0.8%), about 2.8 sigma / 7
// (symmetric) or 5.6 sigma / 15 (asymmetric) over sqrt(12) for int4's groups of 128 (11-12%).
TEST(ExpertQuant, GaussianWeightsRelativeError) {
  const Source s = make_source(DType::BF16, 64, 1024, 3, false);
  auto relative_error = [&](ExpertDType to, Int4Variant variant) {
    const std::vector<float> back =
        dequantize(quantize_matrix(s.bytes.data(), DType::BF16, 64, 1024, to, variant).view());
    double error2 = 0.0, norm2 = 0.0;
    for (std::size_t i = 0; i < back.size(); ++i) {
      error2 += (back[i] - s.values[i]) * (back[i] - s.values[i]);
      norm2 += s.values[i] * s.values[i];
    }
    return std::sqrt(error2 / norm2);
  };
  const double int8 = relative_error(ExpertDType::Int8, Int4Variant::Symmetric);
  EXPECT_GT(int8, 0.004);
  EXPECT_LT(int8, 0.012);
  for (Int4Variant variant : {Int4Variant::Symmetric, Int4Variant::Asymmetric}) {
    const double int4 = relative_error(ExpertDType::Int4, variant);
    EXPECT_GT(int4, 0.07) << int4_variant_name(variant);
    EXPECT_LT(int4, 0.15) << int4_variant_name(variant);
  }
}

TEST(ExpertQuant, ZeroRowsEncodeAsTheFormatSays) {
  const std::vector<float> zeros(300, 0.0f);
  const auto* bytes = reinterpret_cast<const std::byte*>(zeros.data());
  const QuantizedMatrix i8 = quantize_matrix(bytes, DType::F32, 1, 300, ExpertDType::Int8, Int4Variant::Symmetric);
  for (std::uint8_t b : i8.packed()) EXPECT_EQ(b, 0);
  EXPECT_EQ(i8.view().row_scales[0], 0.0f);
  // int4 symmetric: q = 8 (bytes 0x88) over the columns, padding 0; asymmetric: q = 0.
  QuantizedMatrix sym = quantize_matrix(bytes, DType::F32, 1, 300, ExpertDType::Int4, Int4Variant::Symmetric);
  for (std::int64_t b = 0; b < 160; ++b) EXPECT_EQ(sym.packed()[b], b < 150 ? 0x88 : 0) << b;
  QuantizedMatrix asym = quantize_matrix(bytes, DType::F32, 1, 300, ExpertDType::Int4, Int4Variant::Asymmetric);
  for (std::uint8_t b : asym.packed()) EXPECT_EQ(b, 0);
  for (const QuantizedMatrix* m : {&sym, &asym})
    for (float v : dequantize(m->view())) EXPECT_EQ(v, 0.0f);
}

TEST(ExpertQuant, AsymmetricConstantGroupKeepsItsValueInTheOffset) {
  const std::vector<float> row(200, 0.3f);
  QuantizedMatrix m = quantize_matrix(reinterpret_cast<const std::byte*>(row.data()), DType::F32, 1, 200,
                                      ExpertDType::Int4, Int4Variant::Asymmetric);
  for (float v : dequantize(m.view())) EXPECT_EQ(v, f16_to_f32(f32_to_f16(0.3f)));
}

TEST(ExpertQuant, ThreadedQuantizationIsTheSame) {
  const Source s = make_source(DType::BF16, 70, 300, 11);
  ThreadPool pool(3);
  for (ExpertDType to : {ExpertDType::Int8, ExpertDType::Int4}) {
    QuantizedMatrix a = quantize_matrix(s.bytes.data(), DType::BF16, 70, 300, to, Int4Variant::Asymmetric);
    QuantizedMatrix b = quantize_matrix(s.bytes.data(), DType::BF16, 70, 300, to, Int4Variant::Asymmetric, &pool);
    EXPECT_EQ(a.packed(), b.packed());
    EXPECT_EQ(a.row_scales(), b.row_scales());
    EXPECT_EQ(a.group_scales(), b.group_scales());
    EXPECT_EQ(a.group_offsets(), b.group_offsets());
  }
}

}  // namespace
}  // namespace lightdesk
