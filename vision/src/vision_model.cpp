// The CLIP vision tower, the projector and the feature packing of MiniMax-VL-01 on the CPU in
// float32 (model notes §6.2, §6.3, §6.5). Matrix products go through the engine's BLAS linear.
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "lightdesk/vision.h"
#include "model_weights.h"
#include "safetensors.h"
#include "thread_pool.h"

namespace lightdesk::vision {
namespace {

// Tiles run through the tower together: larger batches feed BLAS better, smaller ones bound
// the activation memory (about 60 MB per tile at ViT-L size).
constexpr std::int64_t kTilesPerBatch = 4;

struct Affine {
  WeightTensor weight;
  WeightTensor bias;
};

struct EncoderLayer {
  Affine layer_norm1, q, k, v, out, layer_norm2, fc1, fc2;
};

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s.append(i ? ", " : "").append(std::to_string(shape[i]));
  return s + "]";
}

float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

}  // namespace

struct VisionModel::Impl {
  VisionConfig config;
  std::unique_ptr<Checkpoint> checkpoint;  // the weights point into its mapping
  WeightTensor patch_embedding;            // [hidden, 3 * patch * patch]
  WeightTensor class_embedding;            // [hidden]
  WeightTensor position_embedding;         // [patches² + 1, hidden]
  Affine pre_layernorm;
  std::vector<EncoderLayer> layers;  // only those up to the feature layer
  Affine projector1, projector2;
  WeightTensor image_newline;  // [text hidden]
  std::unique_ptr<ThreadPool> pool;

  WeightTensor tensor(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const TensorView* t = checkpoint->find(name);
    if (!t) throw Error("checkpoint: missing tensor \"" + name + "\"");
    if (t->shape != shape || t->dtype == DType::I64)
      throw Error(t->file + ": tensor \"" + name + "\" has shape " + shape_text(t->shape) + " " +
                  dtype_name(t->dtype) + ", the config needs " + shape_text(shape) + " float");
    return WeightTensor(*t, 0, t->numel());
  }
  Affine affine(const std::string& prefix, std::int64_t out, std::int64_t in) const {
    return {tensor(prefix + ".weight", in ? std::vector<std::int64_t>{out, in} : std::vector<std::int64_t>{out}),
            tensor(prefix + ".bias", {out})};
  }

  void layer_norm(const float* x, std::int64_t rows, const Affine& a, float* y) const {
    const std::int64_t width = config.hidden_size;
    pool->parallel_for(rows, [&](std::int64_t r) {
      const float* xr = x + r * width;
      float* yr = y + r * width;
      double sum = 0.0, squares = 0.0;
      for (std::int64_t i = 0; i < width; ++i) sum += xr[i];
      const double mean = sum / static_cast<double>(width);
      for (std::int64_t i = 0; i < width; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
      const auto inv = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(width) + config.layer_norm_eps));
      const auto m = static_cast<float>(mean);
      for (std::int64_t i = 0; i < width; ++i) yr[i] = (xr[i] - m) * inv * a.weight.data()[i] + a.bias.data()[i];
    });
  }

  // y = x · Wᵀ + b, with GELU if asked.
  void dense(const float* x, std::int64_t rows, std::int64_t in, const Affine& a, std::int64_t out, float* y,
             bool activate) const {
    cpu::linear(x, rows, in, a.weight.data(), out, y);
    pool->parallel_for(rows, [&](std::int64_t r) {
      float* yr = y + r * out;
      for (std::int64_t i = 0; i < out; ++i) yr[i] = activate ? gelu(yr[i] + a.bias.data()[i]) : yr[i] + a.bias.data()[i];
    });
  }

  // Multi-head attention of each tile's tokens: q, k, v, out are [tiles * tokens, hidden].
  void attention(const float* q, const float* k, const float* v, std::int64_t tiles, std::int64_t tokens,
                 float* out) const {
    const std::int64_t D = config.hidden_size, heads = config.num_heads, d = D / heads;
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
        cpu::linear(qh.data(), tokens, d, kh.data(), tokens, scores.data());
        pool->parallel_for(tokens, [&](std::int64_t i) {
          float* row = scores.data() + i * tokens;
          const float top = *std::max_element(row, row + tokens);
          float sum = 0.0f;
          for (std::int64_t j = 0; j < tokens; ++j) sum += (row[j] = std::exp(row[j] - top));
          for (std::int64_t j = 0; j < tokens; ++j) row[j] /= sum;
        });
        cpu::linear(scores.data(), tokens, tokens, vt.data(), d, oh.data());
        for (std::int64_t i = 0; i < tokens; ++i) std::copy_n(oh.data() + i * d, d, out + base + i * D);
      }
  }

  // Projected features [tiles, patches², text hidden] of a batch of tiles.
  void forward(const float* pixels, std::int64_t tiles, float* features) const {
    const std::int64_t D = config.hidden_size, I = config.intermediate_size, P = config.patch_size;
    const std::int64_t side = config.patches_per_side(), patches = side * side, tokens = patches + 1;
    const std::int64_t S = config.image_size, patch_width = 3 * P * P, rows = tiles * tokens;

    // Patch embedding as a matrix product: each patch unrolled in the conv weight's (c, y, x) order.
    std::vector<float> unrolled(static_cast<std::size_t>(tiles * patches * patch_width));
    pool->parallel_for(tiles * patches, [&](std::int64_t n) {
      const std::int64_t t = n / patches, py = (n % patches) / side, px = n % side;
      float* dst = unrolled.data() + n * patch_width;
      for (std::int64_t c = 0; c < 3; ++c)
        for (std::int64_t y = 0; y < P; ++y)
          std::copy_n(pixels + ((t * 3 + c) * S + py * P + y) * S + px * P, P, dst + (c * P + y) * P);
    });
    std::vector<float> embedded(static_cast<std::size_t>(tiles * patches * D));
    cpu::linear(unrolled.data(), tiles * patches, patch_width, patch_embedding.data(), D, embedded.data());

    std::vector<float> h(static_cast<std::size_t>(rows * D)), a(h.size()), q(h.size()), k(h.size()), v(h.size()),
        att(h.size()), wide(static_cast<std::size_t>(rows * I));
    for (std::int64_t t = 0; t < tiles; ++t)
      for (std::int64_t i = 0; i < tokens; ++i) {
        const float* src = i == 0 ? class_embedding.data() : embedded.data() + (t * patches + i - 1) * D;
        for (std::int64_t j = 0; j < D; ++j)
          a[(t * tokens + i) * D + j] = src[j] + position_embedding.data()[i * D + j];
      }
    layer_norm(a.data(), rows, pre_layernorm, h.data());

    for (const EncoderLayer& layer : layers) {
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
    const std::int64_t C = config.text_hidden_size;
    std::vector<float> projected(static_cast<std::size_t>(tiles * patches * C));
    dense(a.data(), tiles * patches, D, projector1, C, projected.data(), true);
    dense(projected.data(), tiles * patches, C, projector2, C, features, false);
  }
};

std::unique_ptr<VisionModel> VisionModel::open(const std::filesystem::path& directory, int threads) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.config = load_vision_config(directory);
  const VisionConfig& c = m.config;
  m.checkpoint = std::make_unique<Checkpoint>(directory);
  const std::int64_t D = c.hidden_size, I = c.intermediate_size, P = c.patch_size, C = c.text_hidden_size;
  const std::int64_t positions = std::int64_t{c.patches_per_side()} * c.patches_per_side() + 1;
  const std::string v = "vision_tower.vision_model.";
  m.patch_embedding = m.tensor(v + "embeddings.patch_embedding.weight", {D, 3, P, P});
  m.class_embedding = m.tensor(v + "embeddings.class_embedding", {D});
  m.position_embedding = m.tensor(v + "embeddings.position_embedding.weight", {positions, D});
  m.pre_layernorm = m.affine(v + "pre_layrnorm", D, 0);
  const int used_layers = c.feature_layer < 0 ? c.num_layers + 1 + c.feature_layer : c.feature_layer;
  for (int j = 0; j < used_layers; ++j) {
    const std::string p = v + "encoder.layers." + std::to_string(j) + ".";
    m.layers.push_back({m.affine(p + "layer_norm1", D, 0), m.affine(p + "self_attn.q_proj", D, D),
                        m.affine(p + "self_attn.k_proj", D, D), m.affine(p + "self_attn.v_proj", D, D),
                        m.affine(p + "self_attn.out_proj", D, D), m.affine(p + "layer_norm2", D, 0),
                        m.affine(p + "mlp.fc1", I, D), m.affine(p + "mlp.fc2", D, I)});
  }
  m.projector1 = m.affine("multi_modal_projector.linear_1", C, D);
  m.projector2 = m.affine("multi_modal_projector.linear_2", C, C);
  m.image_newline = m.tensor("image_newline", {C});
  m.pool = std::make_unique<ThreadPool>(threads);
  return std::unique_ptr<VisionModel>(new VisionModel(std::move(impl)));
}

VisionModel::VisionModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VisionModel::~VisionModel() = default;
const VisionConfig& VisionModel::config() const { return impl_->config; }

std::vector<float> VisionModel::tile_features(std::span<const float> pixel_values, std::int64_t tiles) const {
  const VisionConfig& c = impl_->config;
  const std::int64_t tile_values = 3 * std::int64_t{c.image_size} * c.image_size;
  if (tiles <= 0 || static_cast<std::int64_t>(pixel_values.size()) != tiles * tile_values)
    throw Error("tile_features: " + std::to_string(pixel_values.size()) + " pixel values do not make " +
                std::to_string(tiles) + " tiles of 3x" + std::to_string(c.image_size) + "x" +
                std::to_string(c.image_size));
  const std::int64_t tile_features = std::int64_t{c.patches_per_side()} * c.patches_per_side() * c.text_hidden_size;
  std::vector<float> features(static_cast<std::size_t>(tiles * tile_features));
  for (std::int64_t first = 0; first < tiles; first += kTilesPerBatch)
    impl_->forward(pixel_values.data() + first * tile_values, std::min(kTilesPerBatch, tiles - first),
                   features.data() + first * tile_features);
  return features;
}

std::vector<float> VisionModel::image_embeddings(const PreparedImage& image) const {
  const VisionConfig& c = impl_->config;
  const auto tiles = static_cast<std::int64_t>(image.tiles.size());
  if (tiles != 1 + std::int64_t{image.grid_rows} * image.grid_columns)
    throw Error("image_embeddings: the prepared image has " + std::to_string(tiles) + " tiles for a " +
                std::to_string(image.grid_rows) + "x" + std::to_string(image.grid_columns) + " grid");
  const std::vector<float> features = tile_features(image.pixel_values, tiles);
  const std::int64_t g = c.patches_per_side(), C = c.text_hidden_size;
  const std::int64_t rows = g * image.grid_rows, columns = g * image.grid_columns;
  const FeatureGrid& kept = image.feature_grid;
  const std::int64_t top = (rows - kept.rows) / 2, left = (columns - kept.columns) / 2;

  std::vector<float> out(static_cast<std::size_t>(image.token_count * C));
  if (static_cast<std::int64_t>(out.size()) != (g * g + std::int64_t{kept.rows} * (kept.columns + 1)) * C)
    throw Error("image_embeddings: token count disagrees with the feature grid");
  float* dst = std::copy_n(features.data(), g * g * C, out.data());  // the thumbnail
  for (std::int64_t r = top; r < top + kept.rows; ++r) {
    for (std::int64_t col = left; col < left + kept.columns; ++col) {
      const std::int64_t tile = 1 + (r / g) * image.grid_columns + col / g;
      const std::int64_t patch = (r % g) * g + col % g;
      dst = std::copy_n(features.data() + (tile * g * g + patch) * C, C, dst);
    }
    dst = std::copy_n(impl_->image_newline.data(), C, dst);
  }
  return out;
}

}  // namespace lightdesk::vision
