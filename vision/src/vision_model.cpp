// MiniMax-VL-01's vision side (model notes §6.2, §6.3, §6.5): the checkpoint's tower and
// projector weights, run by the CPU or the CUDA tower, and the packing of tile features with the
// newline embedding into the language model's input rows.
#include <algorithm>

#include "lightdesk/vision.h"
#include "lightdesk/safetensors.h"
#include "vision_tower.h"

namespace lightdesk::vision {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s.append(i ? ", " : "").append(std::to_string(shape[i]));
  return s + "]";
}

}  // namespace

int used_layers(const VisionConfig& config) {
  return config.feature_layer < 0 ? config.num_layers + 1 + config.feature_layer : config.feature_layer;
}

struct VisionModel::Impl {
  VisionConfig config;
  std::unique_ptr<Checkpoint> checkpoint;  // the weights point into its mapping
  TowerWeights weights;  // the CPU tower's (it reads them in place); the CUDA tower holds its own copy
  WeightTensor image_newline;  // [text hidden]
  std::unique_ptr<VisionTower> tower;

  WeightTensor tensor(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const TensorView* t = checkpoint->find(name);
    if (!t) throw Error("checkpoint: missing tensor \"" + name + "\"");
    if (t->shape != shape || !is_float_dtype(t->dtype))
      throw Error(t->file + ": tensor \"" + name + "\" has shape " + shape_text(t->shape) + " " +
                  dtype_name(t->dtype) + ", the config needs " + shape_text(shape) + " float");
    return WeightTensor(*t, 0, t->numel());
  }
  Affine affine(const std::string& prefix, std::int64_t out, std::int64_t in) const {
    return {tensor(prefix + ".weight", in ? std::vector<std::int64_t>{out, in} : std::vector<std::int64_t>{out}),
            tensor(prefix + ".bias", {out})};
  }
};

std::unique_ptr<VisionModel> VisionModel::open(const std::filesystem::path& directory, const ModelOptions& options) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.config = load_vision_config(directory);
  const VisionConfig& c = m.config;
  m.checkpoint = std::make_unique<Checkpoint>(directory);
  const std::int64_t D = c.hidden_size, I = c.intermediate_size, P = c.patch_size, C = c.text_hidden_size;
  const std::int64_t positions = std::int64_t{c.patches_per_side()} * c.patches_per_side() + 1;
  const std::string v = "vision_tower.vision_model.";
  TowerWeights w;
  w.patch_embedding = m.tensor(v + "embeddings.patch_embedding.weight", {D, 3, P, P});
  w.class_embedding = m.tensor(v + "embeddings.class_embedding", {D});
  w.position_embedding = m.tensor(v + "embeddings.position_embedding.weight", {positions, D});
  w.pre_layernorm = m.affine(v + "pre_layrnorm", D, 0);
  for (int j = 0; j < used_layers(c); ++j) {
    const std::string p = v + "encoder.layers." + std::to_string(j) + ".";
    w.layers.push_back({m.affine(p + "layer_norm1", D, 0), m.affine(p + "self_attn.q_proj", D, D),
                        m.affine(p + "self_attn.k_proj", D, D), m.affine(p + "self_attn.v_proj", D, D),
                        m.affine(p + "self_attn.out_proj", D, D), m.affine(p + "layer_norm2", D, 0),
                        m.affine(p + "mlp.fc1", I, D), m.affine(p + "mlp.fc2", D, I)});
  }
  w.projector1 = m.affine("multi_modal_projector.linear_1", C, D);
  w.projector2 = m.affine("multi_modal_projector.linear_2", C, C);
  m.image_newline = m.tensor("image_newline", {C});
  // The backend the engine chooses for the language model. The CUDA tower uploads the weights,
  // and their float32 host copies go with `w`.
  if (resolve_backend(options.backend) == BackendKind::Cuda) {
    m.tower = make_cuda_tower(c, w, options.cuda_float32, single_gpu_device(options));
  } else {
    m.weights = std::move(w);
    m.tower = make_cpu_tower(c, m.weights, options.threads);
  }
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
  VisionTower& tower = *impl_->tower;
  for (std::int64_t first = 0; first < tiles; first += tower.max_tiles())
    tower.forward(pixel_values.data() + first * tile_values, std::min(tower.max_tiles(), tiles - first),
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
