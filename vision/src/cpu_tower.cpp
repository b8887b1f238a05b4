// The CLIP vision tower and the projector on the CPU in float32 (model notes §6.2, §6.3): the
// reference the CUDA tower is checked against. Matrix products go through the engine's BLAS linear.
#include <algorithm>
#include <cmath>

#include "lightdesk/cpu_ops.h"
#include "lightdesk/thread_pool.h"
#include "vision_tower.h"

namespace lightdesk::vision {
namespace {

// Tiles run through the tower together: larger batches feed BLAS better, smaller ones bound
// the activation memory (about 60 MB per tile at ViT-L size).
constexpr std::int64_t kTilesPerBatch = 4;

float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

class CpuTower final : public VisionTower {
 public:
  CpuTower(const VisionConfig& config, const TowerWeights& weights, int threads)
      : config_(config), w_(weights), pool_(threads) {}

  std::int64_t max_tiles() const override { return kTilesPerBatch; }
  void forward(const float* pixels, std::int64_t tiles, float* features) override;

 private:
  void layer_norm(const float* x, std::int64_t rows, const Affine& a, float* y) {
    const std::int64_t width = config_.hidden_size;
    pool_.parallel_for(rows, [&](std::int64_t r) {
      const float* xr = x + r * width;
      float* yr = y + r * width;
      double sum = 0.0, squares = 0.0;
      for (std::int64_t i = 0; i < width; ++i) sum += xr[i];
      const double mean = sum / static_cast<double>(width);
      for (std::int64_t i = 0; i < width; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
      const auto inv = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(width) + config_.layer_norm_eps));
      const auto m = static_cast<float>(mean);
      for (std::int64_t i = 0; i < width; ++i) yr[i] = (xr[i] - m) * inv * a.weight.data()[i] + a.bias.data()[i];
    });
  }

  // y = x · Wᵀ + b, with GELU if asked.
  void dense(const float* x, std::int64_t rows, std::int64_t in, const Affine& a, std::int64_t out, float* y,
             bool activate) {
    cpu::linear(x, rows, in, a.weight.data(), out, y, pool_);
    pool_.parallel_for(rows, [&](std::int64_t r) {
      float* yr = y + r * out;
      for (std::int64_t i = 0; i < out; ++i) yr[i] = activate ? gelu(yr[i] + a.bias.data()[i]) : yr[i] + a.bias.data()[i];
    });
  }

  // Multi-head attention of each tile's tokens: q, k, v, out are [tiles * tokens, hidden].
  void attention(const float* q, const float* k, const float* v, std::int64_t tiles, std::int64_t tokens, float* out) {
    const std::int64_t D = config_.hidden_size, heads = config_.num_heads, d = D / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    std::vector<float> qh(static_cast<std::size_t>(tokens * d)), kh(qh.size()), vt(qh.size()), oh(qh.size());
    std::vector<float> scores(static_cast<std::size_t>(tokens * tokens));
    for (std::int64_t t = 0; t < tiles; ++t)
      for (std::int64_t h = 0; h < heads; ++h) {
        const std::int64_t base = t * tokens * D + h * d;
        for (std::int64_t i = 0; i < tokens; ++i)
          for (std::int64_t j = 0; j < d; ++j) {
            qh[i * d + j] = q[base + i * D + j] * scale;
            kh[i * d + j] = k[base + i * D + j];
            vt[j * tokens + i] = v[base + i * D + j];
          }
        cpu::linear(qh.data(), tokens, d, kh.data(), tokens, scores.data(), pool_);
        pool_.parallel_for(tokens, [&](std::int64_t i) {
          cpu::softmax_row(scores.data() + i * tokens, tokens);
        });
        cpu::linear(scores.data(), tokens, tokens, vt.data(), d, oh.data(), pool_);
        for (std::int64_t i = 0; i < tokens; ++i) std::copy_n(oh.data() + i * d, d, out + base + i * D);
      }
  }

  const VisionConfig& config_;
  const TowerWeights& w_;
  ThreadPool pool_;
};

void CpuTower::forward(const float* pixels, std::int64_t tiles, float* features) {
  const std::int64_t D = config_.hidden_size, I = config_.intermediate_size, P = config_.patch_size;
  const std::int64_t side = config_.patches_per_side(), patches = side * side, tokens = patches + 1;
  const std::int64_t S = config_.image_size, patch_width = 3 * P * P, rows = tiles * tokens;

  // Patch embedding as a matrix product: each patch unrolled in the conv weight's (c, y, x) order.
  std::vector<float> unrolled(static_cast<std::size_t>(tiles * patches * patch_width));
  pool_.parallel_for(tiles * patches, [&](std::int64_t n) {
    const std::int64_t t = n / patches, py = (n % patches) / side, px = n % side;
    float* dst = unrolled.data() + n * patch_width;
    for (std::int64_t c = 0; c < 3; ++c)
      for (std::int64_t y = 0; y < P; ++y)
        std::copy_n(pixels + ((t * 3 + c) * S + py * P + y) * S + px * P, P, dst + (c * P + y) * P);
  });
  std::vector<float> embedded(static_cast<std::size_t>(tiles * patches * D));
  cpu::linear(unrolled.data(), tiles * patches, patch_width, w_.patch_embedding.data(), D, embedded.data(), pool_);

  std::vector<float> h(static_cast<std::size_t>(rows * D)), a(h.size()), q(h.size()), k(h.size()), v(h.size()),
      att(h.size()), wide(static_cast<std::size_t>(rows * I));
  for (std::int64_t t = 0; t < tiles; ++t)
    for (std::int64_t i = 0; i < tokens; ++i) {
      const float* src = i == 0 ? w_.class_embedding.data() : embedded.data() + (t * patches + i - 1) * D;
      for (std::int64_t j = 0; j < D; ++j) a[(t * tokens + i) * D + j] = src[j] + w_.position_embedding.data()[i * D + j];
    }
  layer_norm(a.data(), rows, w_.pre_layernorm, h.data());

  for (const EncoderLayer& layer : w_.layers) {
    layer_norm(h.data(), rows, layer.layer_norm1, a.data());
    dense(a.data(), rows, D, layer.q, D, q.data(), false);
    dense(a.data(), rows, D, layer.k, D, k.data(), false);
    dense(a.data(), rows, D, layer.v, D, v.data(), false);
    attention(q.data(), k.data(), v.data(), tiles, tokens, att.data());
    dense(att.data(), rows, D, layer.out, D, a.data(), false);
    for (std::size_t i = 0; i < h.size(); ++i) h[i] += a[i];
    layer_norm(h.data(), rows, layer.layer_norm2, a.data());
    dense(a.data(), rows, D, layer.fc1, I, wide.data(), true);
    dense(wide.data(), rows, I, layer.fc2, D, a.data(), false);
    for (std::size_t i = 0; i < h.size(); ++i) h[i] += a[i];
  }

  // Drop the class token, then project.
  for (std::int64_t t = 0; t < tiles; ++t)
    std::copy_n(h.data() + (t * tokens + 1) * D, patches * D, a.data() + t * patches * D);
  const std::int64_t C = config_.text_hidden_size;
  std::vector<float> projected(static_cast<std::size_t>(tiles * patches * C));
  dense(a.data(), tiles * patches, D, w_.projector1, C, projected.data(), true);
  dense(projected.data(), tiles * patches, C, w_.projector2, C, features, false);
}

}  // namespace

std::unique_ptr<VisionTower> make_cpu_tower(const VisionConfig& config, const TowerWeights& weights, int threads) {
  return std::make_unique<CpuTower>(config, weights, threads);
}

}  // namespace lightdesk::vision
