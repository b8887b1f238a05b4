// Every op of ModelOps (engine/src/ops.h), on every backend built in and usable here, against the
// CPU ops, in the spirit of llama.cpp's test-backend-ops: fresh random inputs each run (the seed
// is in failure messages), outputs poisoned with NaN first, a normalised error bound per op
// (‖out − ref‖ / ‖ref‖) and activation type. A backend's inputs are stored in its types first and
// read back, so that the reference sees exactly what the backend computed from. Backends that
// cannot run here (no GPU) skip, saying why.
//
// Each OpKind has its cases in case_makers(): an op without any fails EveryOpHasCases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <cstring>
#include <memory>
#include <random>

#include "src/backend.h"
#include "lightdesk/cpu_ops.h"
#include "src/ops.h"
#include "test_util.h"

namespace lightdesk {
namespace {

// What an operand is kept in: the backend's activation type, float32 whatever the backend, or int32.
enum class Role { Activation, Float32, Int32 };

struct Operand {
  Role role = Role::Activation;
  std::vector<float> values;  // Int32: whole numbers
  // Outputs: poisoned before the op unless `values` are their contents to update. The bound for
  // this output when not the case's (a float32 state stays float32 in every mode).
  bool poisoned = false;
  double bound = 0.0;
};

using OpRun = std::function<void(ModelOps& ops, const std::vector<Tensor>& in, const std::vector<Tensor>& out)>;

struct OpCase {
  std::string shape;
  std::vector<Operand> inputs, outputs;
  OpRun run;
  double bound_f32 = 1e-5;
  double bound_bf16 = 1e-2;
};

// `count` values drawn uniformly in [low, high).
std::vector<float> uniform(test::Random& random, std::int64_t count, float low, float high) {
  return random.uniform(static_cast<std::size_t>(count), low, high);
}

// Integers drawn in [low, high], as the float values of an Int32 operand.
std::vector<float> integer_values(test::Random& random, std::int64_t count, int low, int high) {
  const std::vector<std::int32_t> ints = random.integers(static_cast<std::size_t>(count), low, high);
  return {ints.begin(), ints.end()};
}

Operand in(Role role, std::vector<float> values) { return {role, std::move(values), false, 0.0}; }
Operand out(Role role, std::int64_t count) {
  return {role, std::vector<float>(static_cast<std::size_t>(count)), true, 0.0};
}
Operand updated(Role role, std::vector<float> values, double bound = 0.0) {
  return {role, std::move(values), false, bound};
}

std::string dims(std::initializer_list<std::int64_t> values) {
  std::string s;
  for (std::int64_t v : values) {
    if (!s.empty()) s += 'x';
    s += std::to_string(v);
  }
  return s;
}

using CaseMaker = std::function<std::vector<OpCase>(test::Random&)>;

// Quantized weights placed on a backend: their bytes uploaded as int32 words (an I32 tensor's
// upload copies them as they are), kept while the case lives.
class PlacedBytes {
 public:
  QuantizedView place(ModelOps& ops, const QuantizedView& host) {
    QuantizedView v = host;
    const QuantLayout& l = host.layout;
    v.packed = static_cast<const std::uint8_t*>(bytes(ops, host.packed, l.packed_bytes()));
    if (host.row_scales) v.row_scales = static_cast<const float*>(bytes(ops, host.row_scales, l.scale_bytes()));
    if (host.group_scales)
      v.group_scales = static_cast<const std::uint16_t*>(bytes(ops, host.group_scales, l.scale_bytes()));
    if (host.group_offsets)
      v.group_offsets = static_cast<const std::uint16_t*>(bytes(ops, host.group_offsets, l.offset_bytes()));
    return v;
  }

 private:
  const void* bytes(ModelOps& ops, const void* data, std::int64_t size) {
    std::vector<std::int32_t> words(static_cast<std::size_t>((size + 3) / 4));
    std::memcpy(words.data(), data, static_cast<std::size_t>(size));
    buffers_.push_back(ops.allocate(ElementType::I32, static_cast<std::int64_t>(words.size()), "quantized weights"));
    ops.upload(words.data(), static_cast<std::int64_t>(words.size()), buffers_.back()->tensor());
    return buffers_.back()->tensor().data;
  }
  std::vector<std::unique_ptr<TensorBuffer>> buffers_;
};

const std::map<OpKind, CaseMaker>& case_makers() {
  static const std::map<OpKind, CaseMaker> makers = {
      {OpKind::Transfer,
       [](test::Random& rng) {
         const std::int64_t n = 1001;
         OpCase c{"1001 of each type",
                  {in(Role::Activation, uniform(rng, n, -3, 3)), in(Role::Float32, uniform(rng, n, -3, 3)),
                   in(Role::Int32, integer_values(rng, n, -100000, 100000))},
                  {out(Role::Activation, n), out(Role::Float32, n), out(Role::Int32, n)},
                  [n](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                    std::vector<float> values(static_cast<std::size_t>(n));
                    std::vector<std::int32_t> ints(values.size());
                    for (int k = 0; k < 2; ++k) {
                      ops.download(i[k], n, values.data());
                      ops.upload(values.data(), n, o[k]);
                    }
                    ops.download(i[2], n, ints.data());
                    ops.upload(ints.data(), n, o[2]);
                  }};
         c.bound_f32 = c.bound_bf16 = 0.0;  // exact
         return std::vector<OpCase>{c};
       }},
      {OpKind::Embed,
       [](test::Random& rng) {
         const std::int64_t vocab = 300, width = 70, rows = 13;
         OpCase c{dims({vocab, width}) + ", " + std::to_string(rows) + " rows",
                  {in(Role::Activation, uniform(rng, vocab * width, -1, 1)),
                   in(Role::Int32, integer_values(rng, rows, 0, 299))},
                  {out(Role::Activation, rows * width)},
                  [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                    ops.embed(i[0], i[1], rows, width, o[0]);
                  }};
         // A tensor-parallel rank's vocabulary rows 100..219: the other tokens embed to zeros.
         const std::int64_t first = 100, part_rows = 120;
         OpCase part{"rows 100..219 of " + dims({vocab, width}) + ", " + std::to_string(rows) + " rows",
                     {in(Role::Activation, uniform(rng, part_rows * width, -1, 1)),
                      in(Role::Int32, integer_values(rng, rows, 0, 299))},
                     {out(Role::Activation, rows * width)},
                     [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                       ops.embed_part(i[0], first, part_rows, i[1], rows, width, o[0]);
                     }};
         c.bound_f32 = c.bound_bf16 = part.bound_f32 = part.bound_bf16 = 0.0;  // copies
         return std::vector<OpCase>{c, part};
       }},
      {OpKind::RmsNorm,
       [](test::Random& rng) {
         std::vector<OpCase> cases;
         for (auto [rows, width] : {std::pair<std::int64_t, std::int64_t>{1, 64}, {7, 100}, {33, 6144}, {3, 1000}})
           for (bool in_place : {false, true})
             cases.push_back({dims({rows, width}) + (in_place ? " in place" : ""),
                              {in(Role::Float32, uniform(rng, width, 0.5f, 1.5f))},
                              {updated(Role::Activation, uniform(rng, rows * width, -2, 2)),
                               out(Role::Activation, rows * width)},
                              [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                                ops.rms_norm(o[0], rows, width, i[0], 1e-5f, in_place ? o[0] : o[1]);
                                if (in_place) ops.copy(o[0], rows * width, o[1]);
                              }});
         // A rank's channels of a norm over three times as many: its sums of squares, then the
         // norm by sums (its own, standing in for every rank's added).
         for (auto [rows, width] : {std::pair<std::int64_t, std::int64_t>{1, 64}, {7, 100}, {33, 2048}}) {
           OpCase by_sums{dims({rows, width}) + " of " + std::to_string(3 * width) + " channels, by sums",
                          {in(Role::Float32, uniform(rng, width, 0.5f, 1.5f)),
                           in(Role::Activation, uniform(rng, rows * width, -2, 2))},
                          {out(Role::Float32, rows), out(Role::Activation, rows * width)},
                          [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                            ops.sum_squares(i[1], rows, width, o[0]);
                            ops.rms_norm_by_sums(i[1], rows, width, o[0], 3 * width, i[0], 1e-6f, o[1]);
                          }};
           by_sums.outputs[0].bound = 1e-5;  // float32 sums of the stored values in every mode
           cases.push_back(std::move(by_sums));
         }
         return cases;
       }},
      {OpKind::Linear,
       [](test::Random& rng) {
         std::vector<OpCase> cases;
         // Activations to activations, to float32 logits, and the float32 router.
         for (auto [rows, in_features, out_features] :
              {std::tuple<std::int64_t, std::int64_t, std::int64_t>{1, 64, 96}, {37, 100, 52}, {300, 256, 512}})
           for (auto [x_role, y_role] : {std::pair{Role::Activation, Role::Activation},
                                         {Role::Activation, Role::Float32}, {Role::Float32, Role::Float32}})
             cases.push_back({dims({rows, in_features, out_features}) +
                                  (y_role == Role::Float32 ? x_role == Role::Float32 ? " f32" : " to f32" : ""),
                              {in(x_role, uniform(rng, rows * in_features, -1, 1)),
                               in(x_role, uniform(rng, in_features * out_features, -0.2f, 0.2f))},
                              {out(y_role, rows * out_features)},
                              [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                                ops.linear(i[0], rows, in_features, i[1], out_features, o[0]);
                              }});
         return cases;
       }},
      {OpKind::Silu,
       [](test::Random& rng) {
         std::vector<OpCase> cases;
         for (std::int64_t n : {1, 1000, 70001})
           cases.push_back({std::to_string(n),
                            {},
                            {updated(Role::Activation, uniform(rng, n, -6, 6))},
                            [=](ModelOps& ops, const std::vector<Tensor>&, const std::vector<Tensor>& o) {
                              ops.silu(o[0], n);
                            }});
         return cases;
       }},
      {OpKind::SigmoidGate,
       [](test::Random& rng) {
         std::vector<OpCase> cases;
         for (std::int64_t n : {1, 1000, 70001})
           cases.push_back({std::to_string(n),
                            {in(Role::Activation, uniform(rng, n, -6, 6))},
                            {updated(Role::Activation, uniform(rng, n, -6, 6))},
                            [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                              ops.sigmoid_gate(o[0], i[0], n);
                            }});
         return cases;
       }},
      {OpKind::ScaledSum,
       [](test::Random& rng) {
         std::vector<OpCase> cases;
         for (std::int64_t n : {1, 1000, 70001})
           for (bool in_place : {false, true})
             cases.push_back({std::to_string(n) + (in_place ? " in place" : ""),
                              {in(Role::Activation, uniform(rng, n, -6, 6))},
                              {updated(Role::Activation, uniform(rng, n, -6, 6)), out(Role::Activation, n)},
                              [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                                ops.scaled_sum(i[0], 1.3f, o[0], 0.7f, n, in_place ? o[0] : o[1]);
                                if (in_place) ops.copy(o[0], n, o[1]);
                              }});
         return cases;
       }},
      {OpKind::Copy,
       [](test::Random& rng) {
         const std::int64_t n = 4099;
         OpCase c{std::to_string(n) + " of each float type",
                  {in(Role::Activation, uniform(rng, n, -3, 3)), in(Role::Float32, uniform(rng, n, -3, 3))},
                  {out(Role::Activation, n), out(Role::Float32, n)},
                  [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                    ops.copy(i[0], n, o[0]);
                    ops.copy(i[1], n, o[1]);
                  }};
         c.bound_f32 = c.bound_bf16 = 0.0;
         return std::vector<OpCase>{c};
       }},
      {OpKind::Rope,
       [](test::Random& rng) {
         struct Shape {
           std::int64_t rows;
           int heads, head_dim, rotary_dim;
           std::int64_t first;
         };
         std::vector<OpCase> cases;
         for (const Shape& s : {Shape{5, 4, 16, 16, 0}, Shape{5, 2, 16, 8, 1000}, Shape{3, 8, 128, 64, 70000},
                                Shape{17, 3, 100, 36, 12}}) {
           OpCase c{dims({s.rows, s.heads, s.head_dim}) + " rotary " + std::to_string(s.rotary_dim) + " at " +
                        std::to_string(s.first),
                    {},
                    {updated(Role::Activation, uniform(rng, s.rows * s.heads * s.head_dim, -1, 1))},
                    [=](ModelOps& ops, const std::vector<Tensor>&, const std::vector<Tensor>& o) {
                      ops.rope(o[0], s.rows, s.heads, s.head_dim, s.rotary_dim, 1e4f, {s.first, nullptr});
                    }};
           // Angles of large positions lose float32 bits in the sine and cosine.
           c.bound_f32 = 1e-4;
           cases.push_back(c);
         }
         return cases;
       }},
      {OpKind::LightningAttention,
       [](test::Random& rng) {
         struct Shape {
           std::int64_t rows;
           int heads, head_dim;
         };
         std::vector<OpCase> cases;
         // Decode (one row, head_dim 100 off the tensor-core path) and prefill continuing a state,
         // ragged against the 64-row chunks.
         for (const Shape& s : {Shape{1, 4, 16}, Shape{1, 8, 128}, Shape{1, 3, 100}, Shape{80, 4, 16},
                                Shape{130, 3, 64}, Shape{65, 2, 100}}) {
           const std::int64_t d = s.head_dim;
           cases.push_back({dims({s.rows, s.heads, d}),
                            {in(Role::Activation, uniform(rng, s.rows * s.heads * 3 * d, -0.3f, 1.0f)),
                             in(Role::Float32, uniform(rng, s.heads, 0.005f, 0.9f))},
                            {updated(Role::Float32, uniform(rng, s.heads * d * d, -1, 1), 1e-5),
                             out(Role::Activation, s.rows * s.heads * d)},
                            [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                              ops.lightning_attention(i[0], s.rows, s.heads, s.head_dim, i[1], o[0], o[1]);
                            }});
         }
         return cases;
       }},
      {OpKind::WriteKv,
       [](test::Random& rng) {
         std::vector<OpCase> cases;
         for (auto [rows, first, kv_width] :
              {std::tuple<std::int64_t, std::int64_t, std::int64_t>{1, 0, 32}, {1, 100, 256}, {37, 70, 64}}) {
           const std::int64_t positions = first + rows + 5;
           OpCase c{std::to_string(rows) + " rows at " + std::to_string(first) + ", width " + std::to_string(kv_width),
                    {in(Role::Activation, uniform(rng, rows * kv_width, -1, 1)),
                     in(Role::Activation, uniform(rng, rows * kv_width, -1, 1))},
                    {updated(Role::Activation, uniform(rng, positions * kv_width, -1, 1)),
                     updated(Role::Activation, uniform(rng, positions * kv_width, -1, 1))},
                    [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                      ops.write_kv(i[0], i[1], rows, {first, nullptr}, kv_width, contiguous_kv(o[0], o[1], kv_width));
                    }};
           c.bound_f32 = c.bound_bf16 = 0.0;  // copies
           cases.push_back(c);
         }
         return cases;
       }},
      {OpKind::SoftmaxAttention,
       [](test::Random& rng) {
         struct Shape {
           std::int64_t rows, first;
           int heads, kv_heads, head_dim;
         };
         std::vector<OpCase> cases;
         for (const Shape& s : {Shape{1, 0, 4, 2, 16}, Shape{1, 700, 8, 2, 128}, Shape{37, 0, 4, 2, 16},
                                Shape{65, 100, 8, 8, 64}, Shape{20, 3, 6, 2, 100}, Shape{1, 5000, 4, 2, 64},
                                Shape{70, 1000, 16, 2, 128}}) {
           const std::int64_t positions = s.first + s.rows, kv = std::int64_t{s.kv_heads} * s.head_dim;
           cases.push_back({std::to_string(s.rows) + " rows after " + std::to_string(s.first) + ", " +
                                dims({s.heads, s.kv_heads, s.head_dim}),
                            {in(Role::Activation, uniform(rng, s.rows * s.heads * s.head_dim, -1, 1)),
                             in(Role::Activation, uniform(rng, positions * kv, -1, 1)),
                             in(Role::Activation, uniform(rng, positions * kv, -1, 1))},
                            {out(Role::Activation, s.rows * s.heads * s.head_dim)},
                            [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                              ops.softmax_attention(i[0], s.rows, {s.first, nullptr}, contiguous_kv(i[1], i[2], kv),
                                                    s.heads, s.kv_heads, s.head_dim, o[0]);
                            }});
         }
         return cases;
       }},
      {OpKind::Moe,
       [](test::Random& rng) {
         struct Shape {
           std::int64_t hidden, width;
           int experts, top_k;
           std::int64_t rows;
           // Pruned: every third expert masked out and absent, the others in a block of their own
           // (slots); the router's logits come out too.
           bool pruned = false;
         };
         std::vector<OpCase> cases;
         // Few rows take the device-routed products, more the grouped ones; widths off the
         // grouped GEMM's 16-byte pieces take the per-expert GEMMs.
         // An expert-parallel rank holds experts first.. first + held - 1 (held -1: all of them);
         // the others are null and their tokens' shares left out.
         struct Held {
           int first = 0, held = -1;
         };
         const std::pair<Shape, Held> layouts[] = {
             {Shape{96, 40, 8, 2, 1}, {}},           {Shape{96, 40, 8, 2, 3}, {}},
             {Shape{96, 40, 8, 2, 4}, {}},           {Shape{96, 40, 8, 2, 5}, {}},
             {Shape{96, 40, 8, 2, 40}, {}},          {Shape{64, 48, 32, 2, 9}, {}},
             {Shape{64, 48, 32, 2, 70}, {}},         {Shape{100, 36, 4, 2, 2}, {}},
             {Shape{100, 36, 4, 2, 6}, {}},          {Shape{256, 320, 4, 2, 700}, {}},
             {Shape{96, 40, 8, 2, 3, true}, {}},     {Shape{96, 40, 8, 2, 40, true}, {}},
             {Shape{64, 48, 32, 2, 70, true}, {}},   {Shape{96, 40, 8, 2, 3}, {3, 3}},
             {Shape{96, 40, 8, 2, 40}, {3, 3}},      {Shape{96, 40, 8, 2, 40}, {6, 2}},
             {Shape{64, 48, 32, 2, 70}, {0, 4}},     {Shape{100, 36, 4, 2, 6}, {1, 2}},
             {Shape{96, 40, 8, 2, 2}, {4, 0}},       {Shape{96, 40, 8, 2, 40}, {4, 0}}};
         for (const auto& [s, rank] : layouts) {
           const std::int64_t H = s.hidden, I = s.width, E = s.experts;
           const int first = rank.first, count = rank.held < 0 ? s.experts : rank.held;
           // Each expert's slot in the block of held experts (-1: another rank's, or pruned).
           std::vector<float> mask(static_cast<std::size_t>(E)), slots(static_cast<std::size_t>(E), -1.0f);
           std::int64_t held = 0;
           for (std::int64_t e = first; e < first + count; ++e)
             if (s.pruned && e % 3 == 0)
               mask[static_cast<std::size_t>(e)] = -INFINITY;
             else
               slots[static_cast<std::size_t>(e)] = static_cast<float>(held++);
           const std::int64_t block = std::max<std::int64_t>(held, 1);  // an operand is never empty
           std::vector<Operand> outputs = {out(Role::Activation, s.rows * H)};
           if (s.pruned) outputs.push_back(out(Role::Float32, s.rows * E));
           cases.push_back({dims({s.rows, H, I}) + ", " + std::to_string(E) + " experts, top " +
                                std::to_string(s.top_k) + (s.pruned ? ", every third masked, router logits out" : "") +
                                (rank.held < 0 ? "" : ", experts " + std::to_string(first) + ".." +
                                                          std::to_string(first + count - 1) + " held"),
                            {in(Role::Activation, uniform(rng, s.rows * H, -1, 1)),
                             in(Role::Float32, uniform(rng, E * H, -0.3f, 0.3f)),
                             in(Role::Activation, uniform(rng, block * 2 * I * H, -0.2f, 0.2f)),
                             in(Role::Activation, uniform(rng, block * H * I, -0.2f, 0.2f)), in(Role::Float32, mask),
                             in(Role::Int32, slots)},
                            outputs,
                            [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                              MoeTensors w{i[1], {}, {}, H, I, s.top_k};
                              if (s.pruned) {
                                w.expert_mask = i[4];
                                w.expert_slots = i[5];
                              }
                              for (std::int64_t e = 0; e < E; ++e) {
                                const auto slot = static_cast<std::int64_t>(slots[static_cast<std::size_t>(e)]);
                                w.experts.push_back(slot < 0 ? ExpertTensors{}
                                                             : ExpertTensors{i[2].at(slot * 2 * I * H),
                                                                             i[2].at(slot * 2 * I * H + I * H),
                                                                             i[3].at(slot * H * I)});
                              }
                              ops.moe(w, i[0], s.rows, o[0], s.pruned ? o[1] : Tensor{});
                            }});
         }
         return cases;
       }},
      {OpKind::QuantizedMoe,
       [](test::Random& rng) {
         struct Shape {
           std::int64_t hidden, width;
           int experts, top_k;
           std::int64_t rows;
         };
         std::vector<OpCase> cases;
         // Decode and prefill row counts; hidden and expert widths with a partial last int4
         // group (40, 136, 300), several groups (256, 300, 320), rows not in 16-byte pieces.
         for (ExpertDType format : {ExpertDType::Int8, ExpertDType::Int4})
           for (const Shape& s : {Shape{96, 40, 8, 2, 1}, Shape{96, 40, 8, 2, 5}, Shape{64, 48, 32, 2, 9},
                                  Shape{300, 136, 4, 2, 6}, Shape{256, 320, 4, 2, 70}}) {
             const std::int64_t H = s.hidden, I = s.width, E = s.experts;
             // The experts' weights, quantized as one block per matrix kind like a loaded layer.
             const std::vector<float> gate_up = uniform(rng, E * 2 * I * H, -0.2f, 0.2f);
             const std::vector<float> down = uniform(rng, E * H * I, -0.2f, 0.2f);
             auto block = std::make_shared<std::pair<QuantizedMatrix, QuantizedMatrix>>(
                 quantize_matrix(reinterpret_cast<const std::byte*>(gate_up.data()), DType::F32, E * 2 * I, H, format,
                                 Int4Variant::Asymmetric),
                 quantize_matrix(reinterpret_cast<const std::byte*>(down.data()), DType::F32, E * H, I, format,
                                 Int4Variant::Asymmetric));
             auto placed = std::make_shared<std::vector<PlacedBytes>>();
             cases.push_back({std::string(expert_dtype_name(format)) + " " + dims({s.rows, H, I}) + ", " +
                                  std::to_string(E) + " experts, top " + std::to_string(s.top_k),
                              {in(Role::Activation, uniform(rng, s.rows * H, -1, 1)),
                               in(Role::Float32, uniform(rng, E * H, -0.3f, 0.3f))},
                              {out(Role::Activation, s.rows * H)},
                              [=](ModelOps& ops, const std::vector<Tensor>& i, const std::vector<Tensor>& o) {
                                PlacedBytes& bytes = placed->emplace_back();
                                const QuantizedView gu = bytes.place(ops, block->first.view());
                                const QuantizedView dn = bytes.place(ops, block->second.view());
                                MoeTensors w{i[1], {}, {}, H, I, s.top_k};
                                for (std::int64_t e = 0; e < E; ++e)
                                  w.quantized.push_back({gu.rows(e * 2 * I, 2 * I), dn.rows(e * H, H)});
                                ops.quantized_moe(w, i[0], s.rows, o[0], {});
                              }});
           }
         return cases;
       }},
  };
  return makers;
}

ElementType type_of(Role role, const ModelOps& ops) {
  return role == Role::Activation ? ops.activation_type() : role == Role::Float32 ? ElementType::F32 : ElementType::I32;
}

// Operands on one backend: allocated, filled (or poisoned), read back.
class Placed {
 public:
  Placed(ModelOps& ops, const std::vector<Operand>& operands) : ops_(ops) {
    for (const Operand& o : operands) {
      const auto n = static_cast<std::int64_t>(o.values.size());
      buffers_.push_back(ops.allocate(type_of(o.role, ops), n, "an op test operand"));
      tensors_.push_back(buffers_.back()->tensor());
      roles_.push_back(o.role);
      const float poison = o.role == Role::Int32 ? -1.0f : std::numeric_limits<float>::quiet_NaN();
      if (o.poisoned)
        write(tensors_.size() - 1, std::vector<float>(o.values.size(), poison));
      else
        write(tensors_.size() - 1, o.values);
    }
  }
  const std::vector<Tensor>& tensors() const { return tensors_; }
  std::vector<float> read(std::size_t index) const {
    const std::size_t n = count(index);
    std::vector<float> values(n);
    if (roles_[index] == Role::Int32) {
      std::vector<std::int32_t> ints(n);
      ops_.download(tensors_[index], static_cast<std::int64_t>(n), ints.data());
      for (std::size_t k = 0; k < n; ++k) values[k] = static_cast<float>(ints[k]);
    } else {
      ops_.download(tensors_[index], static_cast<std::int64_t>(n), values.data());
    }
    return values;
  }

 private:
  std::size_t count(std::size_t index) const { return counts_[index]; }
  void write(std::size_t index, const std::vector<float>& values) {
    counts_.resize(index + 1);
    counts_[index] = values.size();
    if (roles_[index] == Role::Int32) {
      const std::vector<std::int32_t> ints(values.begin(), values.end());
      ops_.upload(ints.data(), static_cast<std::int64_t>(ints.size()), tensors_[index]);
    } else {
      ops_.upload(values.data(), static_cast<std::int64_t>(values.size()), tensors_[index]);
    }
  }

  ModelOps& ops_;
  std::vector<std::unique_ptr<TensorBuffer>> buffers_;
  std::vector<Tensor> tensors_;
  std::vector<Role> roles_;
  std::vector<std::size_t> counts_;
};

// Runs `c` on `ops`, and on the CPU from the operands as `ops` stored them; the outputs of both.
std::pair<std::vector<std::vector<float>>, std::vector<std::vector<float>>> run_both(ModelOps& ops, ModelOps& cpu,
                                                                                    OpCase c) {
  const Placed device_in(ops, c.inputs), device_out(ops, c.outputs);
  // The reference starts from the stored values (rounded to the backend's types).
  for (std::size_t k = 0; k < c.inputs.size(); ++k) c.inputs[k].values = device_in.read(k);
  for (std::size_t k = 0; k < c.outputs.size(); ++k)
    if (!c.outputs[k].poisoned) c.outputs[k].values = device_out.read(k);
  for (Operand& o : c.inputs)
    if (o.role == Role::Activation) o.role = Role::Float32;
  for (Operand& o : c.outputs)
    if (o.role == Role::Activation) o.role = Role::Float32;
  const Placed cpu_in(cpu, c.inputs), cpu_out(cpu, c.outputs);

  c.run(ops, device_in.tensors(), device_out.tensors());
  c.run(cpu, cpu_in.tensors(), cpu_out.tensors());
  std::vector<std::vector<float>> got, want;
  for (std::size_t k = 0; k < c.outputs.size(); ++k) {
    got.push_back(device_out.read(k));
    want.push_back(cpu_out.read(k));
  }
  return {got, want};
}

TEST(BackendOps, EveryOpHasCases) {
  test::Random rng;
  for (std::size_t k = 0; k < kOpKinds; ++k) {
    const auto kind = static_cast<OpKind>(k);
    const auto maker = case_makers().find(kind);
    ASSERT_NE(maker, case_makers().end()) << "op " << op_name(kind) << " has no cases in backend_ops_test.cpp";
    EXPECT_FALSE(maker->second(rng).empty()) << "op " << op_name(kind);
  }
}

struct BackendOp {
  std::string backend;
  OpKind kind;
};

std::vector<BackendOp> backend_ops() {
  std::vector<BackendOp> all;
  for (const OpsBackend& backend : ops_backends())
    for (std::size_t k = 0; k < kOpKinds; ++k) all.push_back({backend.name, static_cast<OpKind>(k)});
  return all;
}

class BackendOpTest : public ::testing::TestWithParam<BackendOp> {};

TEST_P(BackendOpTest, MatchesTheCpu) {
  OpsBackend backend;
  for (const OpsBackend& b : ops_backends())
    if (b.name == GetParam().backend) backend = b;
  if (const std::string why = backend.unavailable(); !why.empty())
    GTEST_SKIP() << "the " << backend.name << " ops cannot run here: " << why << "; skipping";
  const std::unique_ptr<ModelOps> ops = backend.make();
  const std::unique_ptr<ModelOps> cpu = make_cpu_ops(2);
  test::Random rng;
  const bool bf16 = ops->activation_type() == ElementType::BF16;
  for (const OpCase& c : case_makers().at(GetParam().kind)(rng)) {
    SCOPED_TRACE(c.shape + "; seed " + std::to_string(rng.seed()));
    const auto [got, want] = run_both(*ops, *cpu, c);
    for (std::size_t k = 0; k < got.size(); ++k) {
      const double bound = c.outputs[k].bound > 0.0 ? c.outputs[k].bound : bf16 ? c.bound_bf16 : c.bound_f32;
      const double error = test::relative_error(got[k], want[k]);
      if (bound == 0.0)
        EXPECT_EQ(got[k], want[k]) << "output " << k << " should be exact";
      else
        EXPECT_LT(error, bound) << "output " << k;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendOpTest, ::testing::ValuesIn(backend_ops()),
                         [](const ::testing::TestParamInfo<BackendOp>& param_info) {
                           std::string name = param_info.param.backend + "_" + op_name(param_info.param.kind);
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

}  // namespace
}  // namespace lightdesk
