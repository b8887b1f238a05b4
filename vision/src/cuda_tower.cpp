// The CLIP vision tower and the projector on one CUDA device (model notes §6.2, §6.3). GEMMs go
// through the engine's DeviceContext (cuBLAS, float32 accumulation): the patch embedding over
// unfolded patches, the fused QKV, output and MLP projections, and the attention of every
// (tile, head) as two strided-batched GEMMs around a row softmax. T is bf16 by default, float in
// the checking mode; LayerNorm weights, biases and embeddings stay float32.
#include "cuda_tower.h"

#include <cmath>
#include <mutex>
#include <string>

#include "lightdesk/cuda_vision_ops.h"

namespace lightdesk::vision {
namespace {

using cuda::bf16;

struct DeviceAffine {
  DeviceBuffer weight;  // T [out, in], or float [width] for a LayerNorm
  DeviceBuffer bias;    // float [out]
};

struct DeviceLayer {
  DeviceAffine layer_norm1, qkv, out, layer_norm2, fc1, fc2;  // qkv: the q, k, v rows stacked
};

// Activations of one forward pass, sized for `tiles`; kept between calls and grown as needed.
struct Activations {
  std::int64_t tiles = 0;
  DeviceBuffer pixels, features;                                            // float
  DeviceBuffer patches, a, b, h, qkv, q, k, v, scores, o, wide, projected;  // T
};

template <typename T>
class CudaTower final : public CudaVisionTower {
 public:
  CudaTower(const VisionConfig& config, int device) : config_(config), device_(device) {}

  void load(const TowerWeights& w);
  void randomize(std::uint64_t seed);

  // Every image of the checkpoint's grids in one pass: its largest grid and the thumbnail.
  std::int64_t max_tiles() const override {
    std::int64_t most = 1;
    const int tile = config_.anyres.tile_size;
    for (const Resolution& r : config_.anyres.pinpoints)
      most = std::max(most, 1 + std::int64_t{r.width / tile} * (r.height / tile));
    return most;
  }

  void forward(const float* pixels, std::int64_t tiles, float* features) override {
    const std::lock_guard lock(mutex_);
    device_.make_current();
    reserve(tiles);
    device_.upload(act_.pixels.as<float>(), pixels, static_cast<std::size_t>(tiles * tile_values()) * sizeof(float));
    run(act_.pixels.as<float>(), tiles, act_.features.as<float>());
    device_.download(features, act_.features.as<float>(),
                     static_cast<std::size_t>(tiles * patches() * config_.text_hidden_size) * sizeof(float));
  }

  void forward_on_device(const float* pixels, std::int64_t tiles, float* features) override {
    const std::lock_guard lock(mutex_);
    device_.make_current();
    reserve(tiles);
    run(pixels, tiles, features);
  }

  const DeviceContext& device() const override { return device_; }

 private:
  std::int64_t patches() const { return std::int64_t{config_.patches_per_side()} * config_.patches_per_side(); }
  std::int64_t tile_values() const { return 3 * std::int64_t{config_.image_size} * config_.image_size; }
  // Rows of attention scores padded to 16 bytes (577 tokens make odd rows), so that the batched
  // GEMMs get aligned operands.
  std::int64_t scores_row_stride() const {
    constexpr std::int64_t kAlign = 16 / sizeof(T);
    return (patches() + 1 + kAlign - 1) / kAlign * kAlign;
  }

  // A host float32 tensor on the device as U (through a float32 staging copy when U is bf16).
  // One staging buffer serves the whole load, grown to the largest tensor: the stream orders each
  // upload into it after the previous conversion out of it.
  template <typename U>
  void upload_as(const float* host, std::int64_t count, U* device) {
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
    if constexpr (std::is_same_v<U, float>) {
      device_.upload(device, host, bytes);
    } else {
      if (load_staging_.bytes() < bytes) load_staging_ = DeviceBuffer(bytes, "vision weight conversion");
      device_.upload(load_staging_.as<float>(), host, bytes);
      cuda::from_float(load_staging_.as<float>(), count, device, device_.stream());
    }
  }
  template <typename U>
  DeviceBuffer upload(const WeightTensor& host, const std::string& what) {
    DeviceBuffer buffer = device_array<U>(host.numel(), what);
    upload_as(host.data(), host.numel(), buffer.as<U>());
    return buffer;
  }
  DeviceAffine upload(const Affine& host, bool norm, const std::string& what) {
    return {norm ? upload<float>(host.weight, what) : upload<T>(host.weight, what), upload<float>(host.bias, what)};
  }

  void reserve(std::int64_t tiles);
  void run(const float* pixels, std::int64_t tiles, float* features);

  const VisionConfig config_;
  DeviceContext device_;
  DeviceBuffer patch_embedding_;                       // T [hidden, 3 · patch²]
  DeviceBuffer class_embedding_, position_embedding_;  // float
  DeviceAffine pre_layernorm_, projector1_, projector2_;
  std::vector<DeviceLayer> layers_;
  DeviceBuffer load_staging_;  // float32 weights on their way to bf16, during load() only
  std::mutex mutex_;  // forward calls share the activations
  Activations act_;
};

template <typename T>
void CudaTower<T>::load(const TowerWeights& w) {
  const std::int64_t D = config_.hidden_size;
  patch_embedding_ = upload<T>(w.patch_embedding, "the patch embedding");
  class_embedding_ = upload<float>(w.class_embedding, "the class embedding");
  position_embedding_ = upload<float>(w.position_embedding, "the position embedding");
  pre_layernorm_ = upload(w.pre_layernorm, true, "the pre-LayerNorm");
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const EncoderLayer& host = w.layers[l];
    const std::string what = "vision layer " + std::to_string(l);
    DeviceLayer layer;
    layer.layer_norm1 = upload(host.layer_norm1, true, what);
    layer.qkv = {device_array<T>(3 * D * D, what), device_array<float>(3 * D, what)};
    const Affine* parts[] = {&host.q, &host.k, &host.v};
    for (int part = 0; part < 3; ++part) {
      upload_as(parts[part]->weight.data(), D * D, layer.qkv.weight.as<T>() + part * D * D);
      upload_as(parts[part]->bias.data(), D, layer.qkv.bias.as<float>() + part * D);
    }
    layer.out = upload(host.out, false, what);
    layer.layer_norm2 = upload(host.layer_norm2, true, what);
    layer.fc1 = upload(host.fc1, false, what);
    layer.fc2 = upload(host.fc2, false, what);
    layers_.push_back(std::move(layer));
  }
  projector1_ = upload(w.projector1, false, "the projector");
  projector2_ = upload(w.projector2, false, "the projector");
  device_.synchronize();
  load_staging_ = DeviceBuffer();
}

template <typename T>
void CudaTower<T>::randomize(std::uint64_t seed) {
  const std::int64_t D = config_.hidden_size, I = config_.intermediate_size, C = config_.text_hidden_size;
  const std::int64_t patch_width = 3 * std::int64_t{config_.patch_size} * config_.patch_size;
  auto fill = [&](DeviceBuffer& buffer, bool is_float, std::int64_t count, float low, float high) {
    buffer = is_float ? device_array<float>(count, "random vision weights")
                      : device_array<T>(count, "random vision weights");
    if (is_float)
      cuda::fill_uniform(buffer.as<float>(), count, seed++, low, high, device_.stream());
    else
      cuda::fill_uniform(buffer.as<T>(), count, seed++, low, high, device_.stream());
  };
  auto linear = [&](std::int64_t out, std::int64_t in) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    DeviceAffine a;
    fill(a.weight, false, out * in, -bound, bound);
    fill(a.bias, true, out, -0.02f, 0.02f);
    return a;
  };
  auto norm = [&] {
    DeviceAffine a;
    fill(a.weight, true, D, 0.8f, 1.2f);
    fill(a.bias, true, D, -0.02f, 0.02f);
    return a;
  };
  fill(patch_embedding_, false, D * patch_width, -0.05f, 0.05f);
  fill(class_embedding_, true, D, -0.5f, 0.5f);
  fill(position_embedding_, true, (patches() + 1) * D, -0.5f, 0.5f);
  pre_layernorm_ = norm();
  for (int l = 0; l < used_layers(config_); ++l) {
    DeviceLayer layer;
    layer.layer_norm1 = norm();
    layer.qkv = linear(3 * D, D);
    layer.out = linear(D, D);
    layer.layer_norm2 = norm();
    layer.fc1 = linear(I, D);
    layer.fc2 = linear(D, I);
    layers_.push_back(std::move(layer));
  }
  projector1_ = linear(C, D);
  projector2_ = linear(C, C);
  device_.synchronize();
}

template <typename T>
void CudaTower<T>::reserve(std::int64_t tiles) {
  if (tiles > max_tiles())
    throw Error("vision tower: " + std::to_string(tiles) + " tiles in one pass, at most " +
                std::to_string(max_tiles()));
  if (tiles <= act_.tiles) return;
  const std::int64_t D = config_.hidden_size, tokens = patches() + 1, rows = tiles * tokens;
  const std::int64_t P = config_.patch_size, C = config_.text_hidden_size;
  const std::string what = "vision activations of " + std::to_string(tiles) + " tiles";
  Activations a;
  a.tiles = tiles;
  a.pixels = device_array<float>(tiles * tile_values(), what);
  a.features = device_array<float>(tiles * patches() * C, what);
  a.patches = device_array<T>(tiles * patches() * 3 * P * P, what);
  for (DeviceBuffer* buffer : {&a.a, &a.b, &a.h, &a.q, &a.k, &a.v, &a.o}) *buffer = device_array<T>(rows * D, what);
  a.qkv = device_array<T>(rows * 3 * D, what);
  a.scores = device_array<T>(tiles * config_.num_heads * tokens * scores_row_stride(), what);
  a.wide = device_array<T>(rows * config_.intermediate_size, what);
  a.projected = device_array<T>(tiles * patches() * C, what);
  act_ = std::move(a);
}

template <typename T>
void CudaTower<T>::run(const float* pixels, std::int64_t tiles, float* features) {
  const std::int64_t D = config_.hidden_size, I = config_.intermediate_size, C = config_.text_hidden_size;
  const std::int64_t P = config_.patch_size, patch_count = tiles * patches(), tokens = patches() + 1;
  const std::int64_t rows = tiles * tokens, heads = config_.num_heads, d = D / heads, attended = tiles * heads;
  const std::int64_t score_stride = scores_row_stride();
  const float eps = config_.layer_norm_eps;
  const cudaStream_t stream = device_.stream();
  Activations& w = act_;

  cuda::unfold_patches(pixels, tiles, config_.image_size, config_.patch_size, w.patches.as<T>(), stream);
  device_.linear(w.patches.as<T>(), patch_count, 3 * P * P, patch_embedding_.as<T>(), D, w.b.as<T>());
  cuda::assemble_tokens(w.b.as<T>(), class_embedding_.as<float>(), position_embedding_.as<float>(), tiles, patches(), D,
                        w.a.as<T>(), stream);
  cuda::layer_norm(w.a.as<T>(), rows, D, pre_layernorm_.weight.as<float>(), pre_layernorm_.bias.as<float>(), eps,
                   w.h.as<T>(), stream);

  for (const DeviceLayer& layer : layers_) {
    cuda::layer_norm(w.h.as<T>(), rows, D, layer.layer_norm1.weight.as<float>(), layer.layer_norm1.bias.as<float>(),
                     eps, w.a.as<T>(), stream);
    device_.linear(w.a.as<T>(), rows, D, layer.qkv.weight.as<T>(), 3 * D, w.qkv.as<T>());
    cuda::split_heads(w.qkv.as<T>(), layer.qkv.bias.as<float>(), tiles, tokens, static_cast<int>(heads),
                      static_cast<int>(d), w.q.as<T>(), w.k.as<T>(), w.v.as<T>(), stream);
    // scores_b = q_b k_bᵀ / √d, then o_b = softmax(scores_b) v_b, for every (tile, head) b.
    const MatrixBatch<const T> q{w.q.as<T>(), d, tokens * d}, k{w.k.as<T>(), d, tokens * d},
        v{w.v.as<T>(), d, tokens * d};
    const MatrixBatch<T> scores{w.scores.as<T>(), score_stride, tokens * score_stride};
    device_.batched_linear(q, tokens, d, k, false, tokens, scores, attended, 1.0f / std::sqrt(static_cast<float>(d)));
    cuda::softmax_rows(scores.data, attended * tokens, tokens, score_stride, stream);
    device_.batched_linear(MatrixBatch<const T>{scores.data, score_stride, scores.stride}, tokens, tokens, v, true, d,
                           MatrixBatch<T>{w.o.as<T>(), d, tokens * d}, attended, 1.0f);
    cuda::merge_heads(w.o.as<T>(), tiles, tokens, static_cast<int>(heads), static_cast<int>(d), w.a.as<T>(), stream);
    device_.linear(w.a.as<T>(), rows, D, layer.out.weight.as<T>(), D, w.b.as<T>());
    cuda::add_bias_residual(w.b.as<T>(), rows, D, layer.out.bias.as<float>(), w.h.as<T>(), stream);

    cuda::layer_norm(w.h.as<T>(), rows, D, layer.layer_norm2.weight.as<float>(), layer.layer_norm2.bias.as<float>(),
                     eps, w.a.as<T>(), stream);
    device_.linear(w.a.as<T>(), rows, D, layer.fc1.weight.as<T>(), I, w.wide.as<T>());
    cuda::add_bias(w.wide.as<T>(), rows, I, layer.fc1.bias.as<float>(), cuda::Activation::Gelu, stream);
    device_.linear(w.wide.as<T>(), rows, I, layer.fc2.weight.as<T>(), D, w.b.as<T>());
    cuda::add_bias_residual(w.b.as<T>(), rows, D, layer.fc2.bias.as<float>(), w.h.as<T>(), stream);
  }

  // Drop each tile's class token, then project.
  const std::size_t row_bytes = static_cast<std::size_t>(D) * sizeof(T);
  check(cudaMemcpy2DAsync(w.a.as<T>(), static_cast<std::size_t>(patches()) * row_bytes, w.h.as<T>() + D,
                          static_cast<std::size_t>(tokens) * row_bytes, static_cast<std::size_t>(patches()) * row_bytes,
                          static_cast<std::size_t>(tiles), cudaMemcpyDeviceToDevice, stream),
        "dropping the class tokens");
  device_.linear(w.a.as<T>(), patch_count, D, projector1_.weight.as<T>(), C, w.projected.as<T>());
  cuda::add_bias(w.projected.as<T>(), patch_count, C, projector1_.bias.as<float>(), cuda::Activation::Gelu, stream);
  device_.linear(w.projected.as<T>(), patch_count, C, projector2_.weight.as<T>(), C, features);
  cuda::add_bias(features, patch_count, C, projector2_.bias.as<float>(), cuda::Activation::None, stream);
}

}  // namespace

std::unique_ptr<VisionTower> make_cuda_tower(const VisionConfig& config, const TowerWeights& weights, bool float32,
                                             int device) {
  if (float32) {
    auto tower = std::make_unique<CudaTower<float>>(config, device);
    tower->load(weights);
    return tower;
  }
  auto tower = std::make_unique<CudaTower<bf16>>(config, device);
  tower->load(weights);
  return tower;
}

std::unique_ptr<CudaVisionTower> make_random_cuda_vision_tower(const VisionConfig& config, std::uint64_t seed) {
  auto tower = std::make_unique<CudaTower<bf16>>(config, 0);
  tower->randomize(seed);
  return tower;
}

}  // namespace lightdesk::vision
