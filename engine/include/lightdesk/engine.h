// Lightdesk engine: the whole public API that the application, the command-line front ends and
// the tests use. Everything else under engine/ is private.
//
// A Model is a loaded checkpoint directory (config.json + safetensors) bound to one compute
// backend. A Session is one sequence being processed by that model: it owns the model state
// (per lightning layer a float32 [heads, head_dim, head_dim] state, per softmax layer the K and V
// of every position) and the logits of the last tokens fed. Sessions of one model are
// independent; a Session must not be used from two threads at once.
//
// Errors are reported by throwing lightdesk::Error (or its subclass Cancelled); the message
// names the cause (file, tensor, field). An operation that throws leaves a Session as it was
// before the call, except that a cancelled or failed feed keeps the tokens fully processed
// before the failure (position() says how many).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "lightdesk/error.h"
#include "lightdesk/safetensors_write.h"

namespace lightdesk {

using TokenId = std::int32_t;


enum class BackendKind { Auto, Cpu, Cuda };

// "cpu", "cuda" or "auto"; throws Error on anything else.
BackendKind parse_backend_kind(const std::string& name);
const char* backend_name(BackendKind kind);
// Backends compiled into this build and usable on this machine (Cpu always).
std::vector<BackendKind> available_backends();
// The backend `requested` stands for here: Auto is CUDA where a device is usable, else the CPU.
// Throws, naming the cause, when the requested one is not available.
BackendKind resolve_backend(BackendKind requested);

// A CUDA device and its memory, for showing what a model needs against what each GPU has.
struct GpuDevice {
  int index = 0;
  std::string name;
  std::uint64_t total_bytes = 0;
  // Free now; known only for the current device (the one the engine runs on): measuring another
  // would create a CUDA context there, which itself takes hundreds of MB of it.
  std::optional<std::uint64_t> free_bytes;
};
// The CUDA devices this process can use; empty without CUDA support or without a device.
std::vector<GpuDevice> gpu_devices();

// "0,1" (GPU indices, each once) or "all" (every device of gpu_devices()); throws Error naming
// the fault of anything else, or of "all" on a machine without a GPU.
std::vector<int> parse_devices(const std::string& text);

// How a tensor-parallel layout spreads the MoE experts over the ranks: whole experts, as evenly
// as the count allows (8 on 3 ranks: 3, 3, 2), or a slice of every expert's intermediate width.
enum class MoeParallel { Expert, Tensor };
// "expert" or "tensor"; throws Error on anything else.
MoeParallel parse_moe_parallel(const std::string& name);
const char* moe_parallel_name(MoeParallel mode);

struct ModelOptions {
  BackendKind backend = BackendKind::Auto;
  // Worker threads for the CPU backend; 0 = all hardware threads.
  int threads = 0;
  // Rotate the whole head in softmax layers whatever rotary_dim says, as native transformers
  // <= 5.17 does (a bug there; the released models were trained with partial RoPE).
  bool rope_full_head = false;
  // CUDA backend: keep weights and activations in float32 instead of bf16 (twice the memory,
  // slower; for checking the GPU path against the CPU reference).
  bool cuda_float32 = false;
  // CUDA backend: run each one-token step (decode) as a CUDA graph, one launch on the GPU; off
  // to compare with plain launches.
  bool cuda_graphs = true;
  // The GPUs the model runs on, by their index in gpu_devices() (parse_devices reads "0,1" or
  // "all"); empty: GPU 0. Each gets a context of its own. The CUDA backend runs a model on one
  // GPU: naming several is refused until a backend spreads a model over them. The CPU backend
  // ignores them.
  std::vector<int> devices{};
  // Ranks the model is split over (tensor parallel, one per device; on the CPU backend simulated
  // ranks on threads of their own): query heads, key/value heads (split, or replicated when the
  // ranks outnumber them), the experts as moe_parallel says, and the vocabulary rows of the
  // embedding and LM head. See parallel_plan.
  int tensor_parallel = 1;
  MoeParallel moe_parallel = MoeParallel::Expert;
};

// The one GPU a single-device backend (the CUDA backend, the vision tower) runs on for these
// options: the one named, or 0 when none is. Throws Error naming the cause for several devices
// or an index with no device behind it.
int single_gpu_device(const ModelOptions& options);

enum class LayerKind { Lightning, Softmax };

// The model families the engine runs, told apart once, by config.json's model_type; the rest of
// the program asks the family, never the string.
enum class ModelFamily {
  MiniMaxText01,  // "minimax_text_01" (the released remote-code checkpoint)
  MiniMaxM1,      // "minimax_m1": Text-01's architecture, its own chat template
  MiniMaxNative,  // "minimax": transformers' MiniMaxForCausalLM (Text-01's -hf checkpoint)
  MiniMaxVL01,    // "minimax_vl_01": a Text-01 language model behind a vision tower
};
// The family of a model_type, or nullopt for one the engine does not run.
std::optional<ModelFamily> parse_model_family(std::string_view model_type);
// The model_type config.json gives the family.
const char* model_type_name(ModelFamily family);
// The model_types the engine runs, for error messages ("minimax_text_01, minimax_m1, ...").
std::string supported_model_types();

// The model's architecture as its config.json describes it.
struct ModelShape {
  ModelFamily family = ModelFamily::MiniMaxText01;
  std::string model_type;    // as config.json names it
  std::string architecture;  // first entry of "architectures"
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  std::vector<LayerKind> layer_kinds;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;  // rotated dims per softmax head actually used (0 = no RoPE)
  int num_experts = 0;
  int experts_per_token = 0;
  int expert_width = 0;  // intermediate_size
  std::int64_t max_context = 0;
  std::optional<TokenId> eos_token_id;

  int num_lightning_layers() const;
  int num_softmax_layers() const;
};

// One rank's part of a tensor-parallel layout: a half-open range of each split dimension.
struct RankPlan {
  int rank = 0;
  int first_head = 0, heads = 0;        // query heads (and their lightning heads and states)
  int first_kv_head = 0, kv_heads = 0;  // softmax key/value heads (several ranks may share one)
  int first_expert = 0, experts = 0;    // experts held whole (expert parallel; all of them otherwise)
  int first_expert_column = 0, expert_columns = 0;  // of each held expert's intermediate width
  std::int64_t first_vocab_row = 0, vocab_rows = 0;  // of the embedding and the LM head
  std::uint64_t parameters = 0;                      // the rank's weights, counted in values
};
// The per-rank plan of `ranks` ranks for a model of `shape`; throws Error naming the count that
// does not divide (query heads by the ranks; key/value heads neither divided by the ranks nor
// dividing them; the expert width in tensor mode) or that falls short (ranks > vocabulary rows).
std::vector<RankPlan> parallel_plan(const ModelShape& shape, int ranks, MoeParallel moe);

struct ModelInfo : ModelShape {
  std::filesystem::path directory;
  BackendKind backend = BackendKind::Cpu;

  std::uint64_t parameter_count = 0;
  // Bytes of the checkpoint's tensors by their dtype on disk ("F32", "BF16", "F16").
  std::map<std::string, std::uint64_t> bytes_per_dtype;
  // Bytes the loaded weights occupy on the backend.
  std::uint64_t weight_bytes = 0;
  // A session's fixed part: all lightning states (float32).
  std::uint64_t lightning_state_bytes = 0;
  // A session's growing part: softmax K and V of one position, all softmax layers, in the
  // backend's cache dtype (float32 on the CPU, bf16 on CUDA unless cuda_float32).
  std::uint64_t kv_bytes_per_token = 0;
  // Hex digest of config.json and the safetensors headers: identifies the model a saved
  // session state belongs to without reading the weights.
  std::string fingerprint;

  // State memory of one session holding `tokens` positions.
  std::uint64_t session_bytes(std::int64_t tokens) const;
};

// Sampling: temperature <= 0 means greedy (the lowest id among equal maxima). Otherwise the
// logits are divided by temperature, cut to the top_k best (0 = all), then to the smallest set
// whose probability reaches top_p (1 = all), and a token is drawn with the session's generator,
// which set_seed() restarts.
struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
};

struct FeedProgress {
  std::int64_t tokens_done = 0;   // of this feed call
  std::int64_t tokens_total = 0;  // of this feed call
  double seconds = 0.0;           // since the call began
};

struct FeedOptions {
  // Tokens per forward pass; a long feed is cut into chunks of this size. Any size gives the
  // same result as one pass (up to float rounding). 0: the backend's own size (512 on the CPU,
  // 8192 on a GPU), and at most 512 with all_logits (every row's logits sit on the backend).
  std::int64_t chunk_tokens = 0;
  // Keep the logits of every fed token, not just the last one.
  bool all_logits = false;
  // Called after each chunk; return false to cancel (the feed then throws Cancelled, keeping
  // the chunks already processed).
  std::function<bool(const FeedProgress&)> progress;
  // Debugging and reference checks: called with the hidden states of each chunk, rows x
  // hidden_size row-major. index 0 is the embedding output, i (1..num_layers) the output of
  // layer i-1, num_layers+1 the final normed state that goes into the LM head.
  std::function<void(int index, std::span<const float> hidden, std::int64_t rows)> hidden_states;
  // Multimodal input (image features in place of "<image>" placeholders): empty, or one entry
  // per fed token, each either nullptr (the token's own embedding row) or hidden_size floats
  // that replace that row. The pointed-to rows must stay valid during the call.
  std::span<const float* const> embedding_overrides;
};

// One piece of an exported session state. A state is a stream of parts: first one
// LightningState part per lightning layer, then for each softmax layer its SoftmaxKeys and
// SoftmaxValues for consecutive ranges of positions. Every part carries the position the state
// belongs to (the number of tokens the session had consumed), the layout version and its
// element type, so parts can be stored separately and checked when they come back.
enum class StatePartKind : std::uint8_t { LightningState = 1, SoftmaxKeys = 2, SoftmaxValues = 3 };

// Element types of state parts: lightning states are always F32; softmax K/V come in the
// backend's cache type (BF16 on CUDA, F32 on the CPU). An import takes either and converts.
enum class StateDType : std::uint8_t { F32 = 1, BF16 = 2 };
const char* state_dtype_name(StateDType dtype);  // "f32", "bf16"
std::optional<StateDType> parse_state_dtype(std::string_view name);
std::int64_t state_dtype_bytes(StateDType dtype);

struct StatePart {
  // Version 2 parts carry their dtype. Version 1 (float32 throughout) is read as version 2 F32.
  static constexpr std::uint32_t kLayoutVersion = 2;
  std::uint32_t layout_version = kLayoutVersion;
  StatePartKind kind = StatePartKind::LightningState;
  int layer = 0;               // model layer index
  std::int64_t position = 0;   // tokens consumed by the session this state belongs to
  std::int64_t first_token = 0;  // softmax parts: first position covered
  std::int64_t token_count = 0;  // softmax parts: positions covered
  StateDType dtype = StateDType::F32;
  // LightningState: [heads, head_dim (key), head_dim (value)].
  // SoftmaxKeys / SoftmaxValues: [kv_heads, token_count, head_dim]; keys after RoPE.
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;  // the shape's elements in `dtype`, row-major

  std::int64_t numel() const;
  std::int64_t bytes() const { return numel() * state_dtype_bytes(dtype); }
  // The data of an F32 part as floats; throws Error for another dtype.
  std::span<const float> f32() const;
};

// The parts, in export order and without data, of the state of a model of `shape` after
// `position` tokens, with softmax ranges of at most `kv_chunk_tokens` positions from `kv_first`
// on and K/V in `kv_dtype`: what Session::export_state streams, for code that stores or
// synthesises states.
std::vector<StatePart> state_layout(const ModelShape& shape, std::int64_t position,
                                    std::int64_t kv_chunk_tokens = 4096, std::int64_t kv_first = 0,
                                    StateDType kv_dtype = StateDType::F32);

class Model;

class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const;
  // Tokens consumed so far (the next token's position).
  std::int64_t position() const;
  // The consumed tokens, in order.
  const std::vector<TokenId>& tokens() const;

  // Runs the model over `tokens`, continuing from the current state.
  void feed(std::span<const TokenId> tokens, const FeedOptions& options = {});
  // Logits of the last feed: all fed tokens' rows if FeedOptions::all_logits, else one row.
  // Row-major [logits_rows(), vocab_size]. The one row is copied from the backend's device on
  // the first call after a feed (sample() does not need it).
  std::span<const float> logits() const;
  std::int64_t logits_rows() const;

  // Draws the next token from the last row of logits(), where the backend keeps them (on the
  // GPU for CUDA: only the id comes back). A seed gives the same tokens again on the same
  // backend; the CPU and CUDA backends draw with different random numbers.
  TokenId sample(const SamplingParams& params);
  void set_seed(std::uint64_t seed);

  // Forgets every token.
  void reset();

  // The element type of the softmax K/V parts export_state streams (the backend's cache type).
  StateDType kv_dtype() const;
  // Streams the state to `sink` in parts of at most `kv_chunk_tokens` positions per softmax
  // part. The spans are valid only during the call. Softmax parts start at position `kv_first`:
  // whoever already keeps the K/V of the earlier positions (a store continuing a checkpoint)
  // reads only the new ones, which for a long session is nearly all of the state's bytes.
  void export_state(const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens = 4096,
                    std::int64_t kv_first = 0) const;

  // Replaces the state with one fed back part by part. Parts may come in any order; commit
  // checks that every layer and position is covered, then swaps the new state in. On any
  // error the session keeps its previous state.
  class Import {
   public:
    ~Import();
    Import(Import&&) noexcept;
    void add(const StatePart& part);
    // `tokens` are the ids the state covers (their count must equal the parts' position).
    void commit(std::span<const TokenId> tokens);

   private:
    friend class Session;
    struct Impl;
    explicit Import(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
  };
  Import begin_import(std::int64_t position);

 private:
  friend class Model;
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Model {
 public:
  // Reads and validates config.json and the safetensors files of `directory`, and loads the
  // weights onto the chosen backend. `progress`, if given, is called with (bytes loaded, total)
  // and returns false to stop: open then throws Cancelled, and nothing stays loaded.
  static std::unique_ptr<Model> open(
      const std::filesystem::path& directory, const ModelOptions& options = {},
      const std::function<bool(std::uint64_t, std::uint64_t)>& progress = {});

  // Reads and validates the directory (config and tensor headers) without loading weights:
  // what the model needs before committing memory to it.
  static ModelInfo inspect(const std::filesystem::path& directory, const ModelOptions& options = {});

  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelInfo& info() const;
  std::unique_ptr<Session> create_session() const;

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};


}  // namespace lightdesk
