// The CUDA vision tower: each kernel of cuda_vision_ops.h and the batched GEMM against plain
// loops on fresh random inputs (outputs NaN-poisoned first), the whole tower against the CPU tower,
// and the tiny-vl references (tests/data/tiny-vl, from transformers' CLIPVisionModel) through it.
#include "lightdesk/vision.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <tuple>

#include "cuda_test_util.h"
#include "lightdesk/cuda_vision_ops.h"
#include "lightdesk/cuda_device.h"
#include "lightdesk/safetensors.h"
#include "test_util.h"

namespace lightdesk {
namespace {

using namespace test;  // the shared helpers of the GPU tests (cuda_test_util.h)

template <typename T>
class CudaVisionKernelTest : public GpuTest {
 protected:
  // `values` rounded to T, as a kernel's output of those values is stored.
  std::vector<float> as_stored(const std::vector<float>& values) {
    DeviceArray<T> rounded(values.size());
    return rounded.set(values);
  }

  test::Random random;
};

TYPED_TEST_SUITE(CudaVisionKernelTest, ActivationTypes, ActivationName);

float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x / std::sqrt(2.0f))); }

TYPED_TEST(CudaVisionKernelTest, UnfoldPatchesAndAssembleTokens) {
  for (auto [tiles, size, patch] : {std::tuple<std::int64_t, int, int>{1, 14, 14}, {3, 42, 14}, {2, 30, 6}}) {
    SCOPED_TRACE(std::to_string(tiles) + " tiles of " + std::to_string(size) + "/" + std::to_string(patch));
    const std::int64_t side = size / patch, patches = side * side, patch_width = 3 * patch * patch;
    DeviceArray<float> pixels(tiles * 3 * size * size);
    const auto px = pixels.set(this->random.uniform(pixels.size(), -2.0f, 2.0f));
    DeviceArray<TypeParam> unfolded(tiles * patches * patch_width);
    unfolded.poison();
    cuda::unfold_patches(pixels.get(), tiles, size, patch, unfolded.get(), nullptr);
    std::vector<float> ref(unfolded.size());
    for (std::int64_t t = 0; t < tiles; ++t)
      for (std::int64_t p = 0; p < patches; ++p)
        for (int c = 0; c < 3; ++c)
          for (int y = 0; y < patch; ++y)
            for (int x = 0; x < patch; ++x)
              ref[(t * patches + p) * patch_width + (c * patch + y) * patch + x] =
                  px[((t * 3 + c) * size + p / side * patch + y) * size + p % side * patch + x];
    EXPECT_EQ(unfolded.get_values(), this->as_stored(ref));

    const std::int64_t width = 40, tokens = patches + 1;
    DeviceArray<TypeParam> embeddings(tiles * patches * width), out(tiles * tokens * width);
    DeviceArray<float> class_embedding(width), positions(tokens * width);
    const auto e = embeddings.set(this->random.uniform(embeddings.size(), -1.0f, 1.0f));
    const auto cls = class_embedding.set(this->random.uniform(width, -1.0f, 1.0f));
    const auto pos = positions.set(this->random.uniform(positions.size(), -1.0f, 1.0f));
    out.poison();
    cuda::assemble_tokens(embeddings.get(), class_embedding.get(), positions.get(), tiles, patches, width, out.get(),
                          nullptr);
    std::vector<float> tokens_ref(out.size());
    for (std::int64_t t = 0; t < tiles; ++t)
      for (std::int64_t n = 0; n < tokens; ++n)
        for (std::int64_t c = 0; c < width; ++c)
          tokens_ref[(t * tokens + n) * width + c] =
              (n == 0 ? cls[c] : e[(t * patches + n - 1) * width + c]) + pos[n * width + c];
    EXPECT_CLOSE(out.get_values(), tokens_ref, tolerance<TypeParam>());
  }
}

TYPED_TEST(CudaVisionKernelTest, LayerNorm) {
  for (auto [rows, width] : {std::pair<std::int64_t, std::int64_t>{1, 32}, {7, 100}, {33, 1024}, {3, 1000}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(width));
    DeviceArray<TypeParam> x(rows * width), y(rows * width);
    DeviceArray<float> weight(width), bias(width);
    // An offset, so that a one-pass variance would lose digits.
    const auto xs = x.set(this->random.uniform(x.size(), 3.0f, 7.0f));
    const auto ws = weight.set(this->random.uniform(width, 0.5f, 1.5f));
    const auto bs = bias.set(this->random.uniform(width, -0.5f, 0.5f));
    std::vector<float> ref(xs.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      double mean = 0.0, variance = 0.0;
      for (std::int64_t i = 0; i < width; ++i) mean += xs[r * width + i];
      mean /= static_cast<double>(width);
      for (std::int64_t i = 0; i < width; ++i) variance += std::pow(xs[r * width + i] - mean, 2);
      const double inv = 1.0 / std::sqrt(variance / static_cast<double>(width) + 1e-5);
      for (std::int64_t i = 0; i < width; ++i)
        ref[r * width + i] = static_cast<float>((xs[r * width + i] - mean) * inv * ws[i] + bs[i]);
    }
    y.poison();
    cuda::layer_norm(x.get(), rows, width, weight.get(), bias.get(), 1e-5f, y.get(), nullptr);
    EXPECT_CLOSE(y.get_values(), ref, tolerance<TypeParam>());
    cuda::layer_norm(x.get(), rows, width, weight.get(), bias.get(), 1e-5f, x.get(), nullptr);  // in place
    EXPECT_CLOSE(x.get_values(), ref, tolerance<TypeParam>());
  }
}

TYPED_TEST(CudaVisionKernelTest, BiasGeluAndResidual) {
  for (auto [rows, width] : {std::pair<std::int64_t, std::int64_t>{1, 64}, {13, 300}, {577, 128}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(width));
    DeviceArray<TypeParam> y(rows * width), residual(rows * width);
    DeviceArray<float> bias(width);
    const auto ys = this->random.uniform(y.size(), -4.0f, 4.0f);
    const auto bs = bias.set(this->random.uniform(width, -1.0f, 1.0f));
    for (cuda::Activation activation : {cuda::Activation::None, cuda::Activation::Gelu}) {
      const auto stored = y.set(ys);
      std::vector<float> ref(stored.size());
      for (std::size_t i = 0; i < ref.size(); ++i) {
        const float v = stored[i] + bs[i % width];
        ref[i] = activation == cuda::Activation::Gelu ? gelu(v) : v;
      }
      cuda::add_bias(y.get(), rows, width, bias.get(), activation, nullptr);
      EXPECT_CLOSE(y.get_values(), ref, tolerance<TypeParam>());
    }
    const auto stored = y.set(ys);
    const auto rs = residual.set(this->random.uniform(residual.size(), -4.0f, 4.0f));
    std::vector<float> ref(rs.size());
    for (std::size_t i = 0; i < ref.size(); ++i) ref[i] = rs[i] + stored[i] + bs[i % width];
    cuda::add_bias_residual(y.get(), rows, width, bias.get(), residual.get(), nullptr);
    EXPECT_CLOSE(residual.get_values(), ref, tolerance<TypeParam>());
  }
}

TYPED_TEST(CudaVisionKernelTest, SplitAndMergeHeads) {
  for (auto [tiles, tokens, heads, d] :
       {std::tuple<std::int64_t, std::int64_t, int, int>{1, 5, 1, 8}, {3, 17, 2, 16}, {2, 577, 4, 64}}) {
    SCOPED_TRACE(std::to_string(tiles) + "x" + std::to_string(tokens) + " " + std::to_string(heads) + "h");
    const std::int64_t width = std::int64_t{heads} * d, rows = tiles * tokens;
    DeviceArray<TypeParam> qkv(rows * 3 * width), q(rows * width), k(rows * width), v(rows * width), out(rows * width);
    DeviceArray<float> bias(3 * width);
    const auto xs = qkv.set(this->random.uniform(qkv.size(), -2.0f, 2.0f));
    const auto bs = bias.set(this->random.uniform(bias.size(), -1.0f, 1.0f));
    for (auto* a : {&q, &k, &v}) a->poison();
    cuda::split_heads(qkv.get(), bias.get(), tiles, tokens, heads, d, q.get(), k.get(), v.get(), nullptr);
    std::vector<std::vector<float>> ref(3, std::vector<float>(static_cast<std::size_t>(rows * width)));
    for (std::int64_t t = 0; t < tiles; ++t)
      for (std::int64_t n = 0; n < tokens; ++n)
        for (int part = 0; part < 3; ++part)
          for (int h = 0; h < heads; ++h)
            for (int j = 0; j < d; ++j) {
              const std::int64_t c = part * width + h * d + j;
              ref[part][((t * heads + h) * tokens + n) * d + j] = xs[(t * tokens + n) * 3 * width + c] + bs[c];
            }
    EXPECT_CLOSE(q.get_values(), ref[0], tolerance<TypeParam>());
    EXPECT_CLOSE(k.get_values(), ref[1], tolerance<TypeParam>());
    EXPECT_CLOSE(v.get_values(), ref[2], tolerance<TypeParam>());

    // Merging is a pure layout change: exact.
    const auto os = q.set(this->random.uniform(q.size(), -2.0f, 2.0f));
    out.poison();
    cuda::merge_heads(q.get(), tiles, tokens, heads, d, out.get(), nullptr);
    std::vector<float> merged(os.size());
    for (std::int64_t t = 0; t < tiles; ++t)
      for (int h = 0; h < heads; ++h)
        for (std::int64_t n = 0; n < tokens; ++n)
          for (int j = 0; j < d; ++j)
            merged[(t * tokens + n) * width + h * d + j] = os[((t * heads + h) * tokens + n) * d + j];
    EXPECT_EQ(out.get_values(), merged);
  }
}

TYPED_TEST(CudaVisionKernelTest, SoftmaxRows) {
  for (auto [rows, width, stride] :
       {std::tuple<std::int64_t, std::int64_t, std::int64_t>{1, 577, 577}, {37, 577, 584}, {9, 33, 40}, {3, 1, 1}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(width) + " in rows of " + std::to_string(stride));
    DeviceArray<TypeParam> x(rows * stride);
    const auto xs = x.set(this->random.uniform(x.size(), -8.0f, 20.0f));
    // The padding stays as it was.
    std::vector<float> ref = xs;
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = xs.data() + r * stride;
      const double top = *std::max_element(row, row + width);
      double sum = 0.0;
      for (std::int64_t i = 0; i < width; ++i) sum += std::exp(row[i] - top);
      for (std::int64_t i = 0; i < width; ++i) ref[r * stride + i] = static_cast<float>(std::exp(row[i] - top) / sum);
    }
    cuda::softmax_rows(x.get(), rows, width, stride, nullptr);
    EXPECT_CLOSE(x.get_values(), ref, tolerance<TypeParam>());
  }
}

// DeviceContext::batched_linear (the attention's GEMMs) in both weight layouts, with padded rows
// and gaps between the items; the padding must stay untouched.
TYPED_TEST(CudaVisionKernelTest, BatchedLinear) {
  const DeviceContext device(0);
  for (bool in_by_out : {false, true})
    for (auto [batch, rows, in, out] : {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>{1, 3, 5, 7},
                                        {6, 33, 16, 40},
                                        {4, 577, 64, 577}}) {
      SCOPED_TRACE(std::to_string(batch) + " x " + std::to_string(rows) + "x" + std::to_string(in) + "x" +
                   std::to_string(out) + (in_by_out ? " [in, out]" : " [out, in]"));
      const std::int64_t w_rows = in_by_out ? in : out, w_columns = in_by_out ? out : in;
      const std::int64_t x_ld = in + 3, x_stride = rows * x_ld + 5, w_ld = w_columns + 1, w_stride = w_rows * w_ld;
      const std::int64_t y_ld = out + 8, y_stride = rows * y_ld + 2;
      DeviceArray<TypeParam> xs_device(batch * x_stride), ws_device(batch * w_stride), ys_device(batch * y_stride);
      const auto xs = xs_device.set(this->random.uniform(xs_device.size(), -1.0f, 1.0f));
      const auto ws = ws_device.set(this->random.uniform(ws_device.size(), -1.0f, 1.0f));
      ys_device.poison();
      device.batched_linear(MatrixBatch<const TypeParam>{xs_device.get(), x_ld, x_stride}, rows, in,
                            MatrixBatch<const TypeParam>{ws_device.get(), w_ld, w_stride}, in_by_out, out,
                            MatrixBatch<TypeParam>{ys_device.get(), y_ld, y_stride}, batch, 0.5f);
      device.synchronize();
      const auto ys = ys_device.get_values();
      std::vector<float> result, ref;
      for (std::int64_t b = 0; b < batch; ++b)
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t o = 0; o < out; ++o) {
            double sum = 0.0;
            for (std::int64_t i = 0; i < in; ++i)
              sum += static_cast<double>(xs[b * x_stride + r * x_ld + i]) *
                     ws[b * w_stride + (in_by_out ? i * w_ld + o : o * w_ld + i)];
            ref.push_back(static_cast<float>(0.5 * sum));
            result.push_back(ys[b * y_stride + r * y_ld + o]);
          }
      EXPECT_CLOSE(result, ref, tolerance<TypeParam>());
      std::int64_t touched_padding = 0;
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(ys.size()); ++i)
        if (i % y_stride >= rows * y_ld || i % y_stride % y_ld >= out) touched_padding += !std::isnan(ys[i]);
      EXPECT_EQ(touched_padding, 0);
    }
}

// --- the whole tower --------------------------------------------------------------------------

const std::filesystem::path kVlDir = std::filesystem::path(LIGHTDESK_TEST_DATA) / "tiny-vl";

// float32 mode: the bound for features, relative to the largest feature.
constexpr double kFloat32Bound = 1e-4;
// bf16 mode: inputs, weights and every activation (the attention scores too, as PyTorch's eager
// bf16 attention keeps them) are rounded to 8 significant bits, up to 2^-9 ≈ 0.2 % each. The
// tiny tower's 2 layers and the projector chain about a dozen such roundings on top of each other,
// partly cancelling: the features are expected to move by about 1 % of the largest one. Measured
// on an H200 (2026-11-22): 0.9e-2 to 1.1e-2 on the references, 6.7e-3 against the CPU tower on
// random tiles (float32 mode: 0.7e-6 to 1.1e-6). The bound leaves headroom over that.
constexpr double kBf16Bound = 4e-2;

std::unique_ptr<vision::VisionModel> tower(BackendKind backend, bool float32) {
  return vision::VisionModel::open(kVlDir, {.backend = backend, .cuda_float32 = float32});
}

class CudaVisionTowerTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { LIGHTDESK_SKIP_WITHOUT_GPU(); }
  bool float32() const { return GetParam(); }
  double bound() const { return float32() ? kFloat32Bound : kBf16Bound; }
  const char* mode() const { return float32() ? "float32" : "bf16"; }
};

std::string mode_name(const ::testing::TestParamInfo<bool>& info) { return info.param ? "f32" : "bf16"; }

// Random pixels, more tiles than one CUDA pass takes, against the CPU tower.
TEST_P(CudaVisionTowerTest, MatchesTheCpuTower) {
  const std::int64_t tiles = 21;
  test::Random random;
  const auto pixels = random.uniform(static_cast<std::size_t>(tiles * 3 * 336 * 336), -1.8f, 2.2f);
  const auto expected = tower(BackendKind::Cpu, true)->tile_features(pixels, tiles);
  const auto features = tower(BackendKind::Cuda, float32())->tile_features(pixels, tiles);
  const double error = test::max_rel_diff(features, expected);
  std::printf("[ measured ] vision tower %s vs the CPU tower, %lld random tiles: max |d| / max |ref| = %.3g\n", mode(),
              static_cast<long long>(tiles), error);
  EXPECT_LT(error, bound()) << "seed " << random.seed();
}

// Images that tools/make_vl_fixture.py draws from integer formulas, drawn again here (the GPU
// build has no image decoder); the project's preprocessing gives the reference tiles exactly for
// them.
vision::Image reference_image(const std::string& name) {
  vision::Image image;
  auto pixel = [&](int x, int y) {
    return image.pixels.data() + (std::size_t{1} * y * image.width + x) * image.channels;
  };
  auto u8 = [](long v) { return static_cast<std::uint8_t>(v); };
  if (name == "gradient") {
    image = {336, 336, 3, std::vector<std::uint8_t>(336 * 336 * 3)};
    for (int y = 0; y < 336; ++y)
      for (int x = 0; x < 336; ++x) {
        std::uint8_t* p = pixel(x, y);
        p[0] = u8(x * 255 / 335), p[1] = u8(y * 255 / 335), p[2] = u8((x + y) * 255 / 670);
      }
  } else if (name == "alpha") {
    image = {500, 375, 4, std::vector<std::uint8_t>(500 * 375 * 4)};
    for (int y = 0; y < 375; ++y)
      for (int x = 0; x < 500; ++x) {
        std::uint8_t* p = pixel(x, y);
        p[0] = u8(x * 255 / 499), p[1] = u8(255 - y * 255 / 374), p[2] = u8((x ^ y) & 255),
        p[3] = u8((x + y) * 255 / 873);
      }
  } else if (name == "rings") {
    image = {1000, 700, 3, std::vector<std::uint8_t>(1000 * 700 * 3)};
    for (int y = 0; y < 700; ++y)
      for (int x = 0; x < 1000; ++x) {
        const long dx = x - 420, dy = y - 300;
        const long ring =
            static_cast<long>(std::floor(std::sqrt(static_cast<double>(dx * dx + dy * dy)) / 24.0)) % 2 * 180;
        std::uint8_t* p = pixel(x, y);
        p[0] = u8(ring + x * 60 / 999), p[1] = u8(ring / 2 + 40), p[2] = u8(255 - ring);
      }
  }
  return image;
}

class CudaVisionReferenceTest : public CudaVisionTowerTest {};

TEST_P(CudaVisionReferenceTest, FeaturesMatchTheReferences) {
  static const auto references = read_safetensors(kVlDir / "references.safetensors");
  const auto model = tower(BackendKind::Cuda, float32());
  for (const std::string name : {"gradient", "alpha", "rings"}) {
    SCOPED_TRACE(name);
    const vision::PreparedImage image = vision::prepare_image(reference_image(name), model->config().anyres);
    const LoadedTensor& grid = references.at(name + ".grid");
    ASSERT_EQ(grid.i64, (std::vector<std::int64_t>{image.grid_rows, image.grid_columns}));
    const LoadedTensor& expected = references.at(name + ".features");
    const std::vector<float> features = model->image_embeddings(image);
    ASSERT_EQ(static_cast<std::int64_t>(features.size()), expected.shape[0] * expected.shape[1]);
    const double error = test::max_rel_diff(features, expected.f32);
    std::printf("[ measured ] vision reference %s %s (%zu tiles): max |d| / max |ref| = %.3g (bound %.3g)\n",
                name.c_str(), mode(), image.tiles.size(), error, bound());
    EXPECT_LT(error, bound());
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, CudaVisionTowerTest, ::testing::Bool(), mode_name);
INSTANTIATE_TEST_SUITE_P(Modes, CudaVisionReferenceTest, ::testing::Bool(), mode_name);

}  // namespace
}  // namespace lightdesk
