// lightdesk-cli: the engine from the command line. Its verbs and flags are a contract (see
// README.md); keep them stable.
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/store.h"
#include "lightdesk/text.h"
#include "lightdesk/vision.h"

namespace {

constexpr const char* kUsage = R"(usage:
  lightdesk-cli info     --model DIR [--tokens N] [--backend cpu|cuda|auto]
  lightdesk-cli logits   --model DIR --ids 5,17,42 --out FILE.safetensors [--decode-from N]
  lightdesk-cli generate --model DIR (--ids 5,17,42 | --prompt TEXT) --max-new-tokens K
                         [--greedy | --temperature T --top-p P --top-k N --seed S]
  lightdesk-cli tokenize   --model DIR --file F
  lightdesk-cli detokenize --model DIR --ids 5,17,42
  lightdesk-cli ask      --model DIR [--document FILE...] [--image FILE...] --question TEXT
                         [--max-new-tokens K] [--greedy | sampling options as for generate]
                         (at least one --document or --image, except to go on in a stored
                         session; --image needs a MiniMax-VL-01 directory)
  lightdesk-cli image-features --model DIR --image FILE --out FILE.safetensors
                         (MiniMax-VL-01: float32 pixel_values [tiles, 3, 336, 336] thumbnail
                         first, int64 grid [rows, columns], float32 features [tokens, hidden])
logits, generate and ask: --session-db FILE --session NAME  continue the named session stored
                in FILE (its state is loaded before the run, new ids append at its position, and
                the state is saved after the run; ask renders only its new turn of the
                conversation and keeps the question and answer in the session's messages)
common options: --backend cpu|cuda|auto  --threads N  --chunk N (prefill tokens per pass;
                default 512 on the CPU, 8192 with CUDA)
                --devices 0,1|all (the GPUs the model runs on; default GPU 0; one for now)
                --rope-full-head (rotate whole heads, as native transformers <= 5.17 does)
                --cuda-float32 (CUDA backend in float32 instead of bf16, for checking)
                --stats (timings on standard error)
)";

// A mistake in the command line itself (exit code 2, with the usage).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
      std::string key = argv[i];
      if (key.rfind("--", 0) != 0) throw UsageError("unexpected argument \"" + key + "\"");
      key = key.substr(2);
      if (key == "greedy" || key == "rope-full-head" || key == "stats") {
        flags_.emplace(key, "");
        continue;
      }
      if (i + 1 >= argc) throw UsageError("--" + key + " needs a value");
      flags_.emplace(key, argv[++i]);
    }
  }

  bool has(const std::string& key) const { return flags_.count(key) > 0; }

  std::string take(const std::string& key) {
    auto it = flags_.find(key);
    if (it == flags_.end()) throw UsageError("missing --" + key);
    if (flags_.count(key) > 1) throw UsageError("--" + key + " is given more than once");
    std::string v = it->second;
    flags_.erase(it);
    return v;
  }
  // All values of an option that may be repeated, in command-line order.
  std::vector<std::string> take_all(const std::string& key) {
    std::vector<std::string> values;
    const auto [first, last] = flags_.equal_range(key);
    for (auto it = first; it != last; ++it) values.push_back(it->second);
    flags_.erase(key);
    return values;
  }
  std::optional<std::string> take_optional(const std::string& key) {
    if (!has(key)) return std::nullopt;
    return take(key);
  }
  bool take_flag(const std::string& key) {
    const bool present = has(key);
    flags_.erase(key);
    return present;
  }
  long long take_int(const std::string& key, long long min_value) { return parse_int(key, take(key), min_value); }
  std::optional<long long> take_optional_int(const std::string& key, long long min_value) {
    auto v = take_optional(key);
    if (!v) return std::nullopt;
    return parse_int(key, *v, min_value);
  }
  std::optional<double> take_optional_number(const std::string& key) {
    auto v = take_optional(key);
    if (!v) return std::nullopt;
    try {
      std::size_t used = 0;
      double d = std::stod(*v, &used);
      if (used == v->size()) return d;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + key + " needs a number, got \"" + *v + "\"");
  }
  void check_all_used() const {
    if (!flags_.empty()) throw UsageError("unknown or misplaced option --" + flags_.begin()->first);
  }

 private:
  static long long parse_int(const std::string& key, const std::string& text, long long min_value) {
    try {
      std::size_t used = 0;
      long long v = std::stoll(text, &used);
      if (used == text.size() && v >= min_value) return v;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + key + " needs an integer >= " + std::to_string(min_value) + ", got \"" + text + "\"");
  }
  std::multimap<std::string, std::string> flags_;
};

std::vector<lightdesk::TokenId> parse_ids(const std::string& text) {
  std::vector<lightdesk::TokenId> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      std::size_t used = 0;
      long long v = std::stoll(item, &used);
      if (used != item.size() || v < 0 || v > 0x7fffffff) throw std::invalid_argument(item);
      ids.push_back(static_cast<lightdesk::TokenId>(v));
    } catch (const std::exception&) {
      throw UsageError("--ids: \"" + item + "\" is not a token id");
    }
  }
  if (ids.empty()) throw UsageError("--ids is empty");
  return ids;
}

std::string human_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

struct Common {
  std::string model_dir;
  lightdesk::ModelOptions options;
  std::int64_t chunk = 0;  // the backend's own size
  bool stats = false;
};

Common take_common(Args& args) {
  Common c;
  c.model_dir = args.take("model");
  if (auto b = args.take_optional("backend")) c.options.backend = lightdesk::parse_backend_kind(*b);
  if (auto t = args.take_optional_int("threads", 0)) c.options.threads = static_cast<int>(*t);
  if (auto d = args.take_optional("devices")) c.options.devices = lightdesk::parse_devices(*d);
  if (auto n = args.take_optional_int("chunk", 1)) c.chunk = *n;
  c.options.rope_full_head = args.take_flag("rope-full-head");
  c.options.cuda_float32 = args.take_flag("cuda-float32");
  c.stats = args.take_flag("stats");
  return c;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// --session-db FILE --session NAME (see lightdesk::store::NamedSessionState).
struct StoredSessionArgs {
  std::string db;
  std::string name;
};

std::optional<StoredSessionArgs> take_stored_session(Args& args) {
  auto db = args.take_optional("session-db");
  auto name = args.take_optional("session");
  if (db.has_value() != name.has_value()) throw UsageError("--session-db and --session go together");
  if (!db) return std::nullopt;
  return StoredSessionArgs{*db, *name};
}

// Loads the stored session into `session` (none without --session-db); save() it after the run.
std::unique_ptr<lightdesk::store::NamedSessionState> attach_stored_session(
    const std::optional<StoredSessionArgs>& stored, lightdesk::Session& session, const Common& c) {
  if (!stored) return nullptr;
  const auto start = std::chrono::steady_clock::now();
  auto state = std::make_unique<lightdesk::store::NamedSessionState>(stored->db, stored->name, session, c.chunk);
  if (!state->notice().empty()) std::fprintf(stderr, "lightdesk-cli: %s\n", state->notice().c_str());
  if (c.stats)
    std::fprintf(stderr, "session \"%s\": %lld tokens restored in %.3f s\n", stored->name.c_str(),
                 static_cast<long long>(session.position()), seconds_since(start));
  return state;
}

int cmd_info(Args& args) {
  Common c = take_common(args);
  const auto tokens = args.take_optional_int("tokens", 0);
  args.check_all_used();
  const lightdesk::ModelInfo info = lightdesk::Model::inspect(c.model_dir, c.options);
  const std::int64_t n = tokens ? *tokens : info.max_context;
  std::string softmax_at;
  for (int l = 0; l < info.num_layers; ++l)
    if (info.layer_kinds[l] == lightdesk::LayerKind::Softmax)
      softmax_at.append(softmax_at.empty() ? "" : ",").append(std::to_string(l));
  std::printf("model: %s\n", info.directory.string().c_str());
  std::printf("type: %s (%s)\n", info.model_type.c_str(), info.architecture.c_str());
  std::printf("layers: %d (%d lightning, %d softmax at %s)\n", info.num_layers, info.num_lightning_layers(),
              info.num_softmax_layers(), softmax_at.empty() ? "none" : softmax_at.c_str());
  std::printf("hidden size: %d; heads: %d query, %d key/value, head dim %d, rotary dims %d\n", info.hidden_size,
              info.num_heads, info.num_kv_heads, info.head_dim, info.rotary_dim);
  std::printf("experts: %d, top %d, width %d\n", info.num_experts, info.experts_per_token, info.expert_width);
  std::printf("vocabulary: %d; max context: %lld\n", info.vocab_size, static_cast<long long>(info.max_context));
  std::printf("parameters: %llu\n", static_cast<unsigned long long>(info.parameter_count));
  for (const auto& [dtype, bytes] : info.bytes_per_dtype)
    std::printf("bytes %s: %llu (%s)\n", dtype.c_str(), static_cast<unsigned long long>(bytes), human_bytes(bytes).c_str());
  std::printf("backend: %s; weights loaded: %s\n", lightdesk::backend_name(info.backend),
              human_bytes(info.weight_bytes).c_str());
  std::printf("session state: %s fixed (lightning) + %s per token (softmax K/V)\n",
              human_bytes(info.lightning_state_bytes).c_str(), human_bytes(info.kv_bytes_per_token).c_str());
  std::printf("session of %lld tokens: %llu bytes (%s)\n", static_cast<long long>(n),
              static_cast<unsigned long long>(info.session_bytes(n)), human_bytes(info.session_bytes(n)).c_str());
  std::printf("fingerprint: %s\n", info.fingerprint.c_str());
  for (const auto& gpu : lightdesk::gpu_devices())
    std::printf("gpu %d: %s, %s%s\n", gpu.index, gpu.name.c_str(), human_bytes(gpu.total_bytes).c_str(),
                gpu.free_bytes ? (", " + human_bytes(*gpu.free_bytes) + " free").c_str() : "");
  return 0;
}

int cmd_logits(Args& args) {
  Common c = take_common(args);
  const auto ids = parse_ids(args.take("ids"));
  const std::string out = args.take("out");
  const auto decode_from = args.take_optional_int("decode-from", 0);
  const auto stored_session = take_stored_session(args);
  args.check_all_used();
  const auto n = static_cast<std::int64_t>(ids.size());
  const std::int64_t prefill = decode_from ? std::min<std::int64_t>(*decode_from, n) : n;

  auto model = lightdesk::Model::open(c.model_dir, c.options);
  const std::int64_t V = model->info().vocab_size;
  auto session = model->create_session();
  const auto stored = attach_stored_session(stored_session, *session, c);
  std::vector<float> logits;
  logits.reserve(static_cast<std::size_t>(n * V));
  const auto start = std::chrono::steady_clock::now();
  lightdesk::FeedOptions prefill_options;
  prefill_options.chunk_tokens = c.chunk;
  prefill_options.all_logits = true;
  // Without a prefill the session may still hold the logits of a restored run: take none.
  if (prefill > 0) {
    session->feed(std::span(ids).first(static_cast<std::size_t>(prefill)), prefill_options);
    logits.assign(session->logits().begin(), session->logits().end());
  }
  const double prefill_seconds = seconds_since(start);
  for (std::int64_t i = prefill; i < n; ++i) {
    session->feed(std::span(ids).subspan(static_cast<std::size_t>(i), 1));
    logits.insert(logits.end(), session->logits().begin(), session->logits().end());
  }
  if (c.stats)
    std::fprintf(stderr, "prefill %lld tokens in %.3f s; %lld decode steps in %.3f s\n",
                 static_cast<long long>(prefill), prefill_seconds, static_cast<long long>(n - prefill),
                 seconds_since(start) - prefill_seconds);
  lightdesk::write_safetensors(out, {lightdesk::OutputTensor{"logits", {n, V}, logits, {}}});
  if (stored) stored->save();
  return 0;
}

struct Sampling {
  lightdesk::SamplingParams params;  // greedy unless a sampling flag is given
  std::uint64_t seed = 0;
};

Sampling take_sampling(Args& args) {
  const bool greedy = args.take_flag("greedy");
  const auto temperature = args.take_optional_number("temperature");
  const auto top_p = args.take_optional_number("top-p");
  const auto top_k = args.take_optional_int("top-k", 0);
  const auto seed = args.take_optional_int("seed", 0);
  const bool sampling = temperature || top_p || top_k;
  if (greedy && (sampling || seed)) throw UsageError("--greedy excludes --temperature, --top-p, --top-k and --seed");
  lightdesk::SamplingParams params;
  if (sampling) {
    params.temperature = static_cast<float>(temperature.value_or(1.0));
    params.top_p = static_cast<float>(top_p.value_or(1.0));
    params.top_k = static_cast<int>(top_k.value_or(0));
    if (!(params.temperature > 0.0f)) throw UsageError("--temperature must be greater than 0 (use --greedy)");
    if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) throw UsageError("--top-p must be within (0, 1]");
  }
  return {params, static_cast<std::uint64_t>(seed.value_or(0))};
}

// Prefill progress on standard error, one line rewritten in place: tokens done, speed, time left.
std::function<bool(const lightdesk::FeedProgress&)> progress_line() {
  return [](const lightdesk::FeedProgress& p) {
    const double rate = p.seconds > 0 ? static_cast<double>(p.tokens_done) / p.seconds : 0.0;
    const double left = rate > 0 ? static_cast<double>(p.tokens_total - p.tokens_done) / rate : 0.0;
    std::fprintf(stderr, "\rprefill %lld/%lld tokens, %.0f tokens/s, %.1f s left ", static_cast<long long>(p.tokens_done),
                 static_cast<long long>(p.tokens_total), rate, left);
    if (p.tokens_done == p.tokens_total) std::fputc('\n', stderr);
    return true;
  };
}

// generate --prompt: raw text in (no chat template), text out, stopping at the end-of-turn token.
int generate_from_prompt(const Common& c, const std::string& prompt, long long max_new, const Sampling& sampling,
                         const std::optional<StoredSessionArgs>& stored_session) {
  const auto tokenizer = lightdesk::Tokenizer::open(c.model_dir);
  const auto ids = tokenizer->encode(prompt);
  if (ids.empty()) throw UsageError("--prompt is empty");
  auto model = lightdesk::Model::open(c.model_dir, c.options);
  auto session = model->create_session();
  const auto stored = attach_stored_session(stored_session, *session, c);
  session->set_seed(sampling.seed);
  lightdesk::GenerationOptions options;
  options.max_new_tokens = max_new;
  options.sampling = sampling.params;
  options.stop_token = model->info().eos_token_id;
  options.prefill.chunk_tokens = c.chunk;
  const std::int64_t start_position = session->position();
  const auto generated = lightdesk::generate_text(*session, *tokenizer, ids, options, [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  std::printf("\n");
  if (stored) {
    // generate_text does not feed the last token it draws; the stored session keeps it.
    const auto fed = static_cast<std::size_t>(session->position() - start_position) - ids.size();
    if (fed < generated.size()) session->feed(std::span(generated).subspan(fed));
    stored->save();
  }
  return 0;
}

int cmd_generate(Args& args) {
  Common c = take_common(args);
  const auto prompt = args.take_optional("prompt");
  const auto ids = prompt ? std::vector<lightdesk::TokenId>{} : parse_ids(args.take("ids"));
  const long long max_new = args.take_int("max-new-tokens", 0);
  const Sampling sampling = take_sampling(args);
  const auto stored_session = take_stored_session(args);
  args.check_all_used();
  if (prompt) return generate_from_prompt(c, *prompt, max_new, sampling, stored_session);
  const lightdesk::SamplingParams& params = sampling.params;

  auto model = lightdesk::Model::open(c.model_dir, c.options);
  auto session = model->create_session();
  const auto stored = attach_stored_session(stored_session, *session, c);
  session->set_seed(sampling.seed);
  lightdesk::FeedOptions prefill_options;
  prefill_options.chunk_tokens = c.chunk;
  const auto start = std::chrono::steady_clock::now();
  session->feed(ids, prefill_options);
  const double prefill_seconds = seconds_since(start);
  std::string line;
  for (long long i = 0; i < max_new; ++i) {
    const lightdesk::TokenId next = session->sample(params);
    line.append(i ? "," : "").append(std::to_string(next));
    // A stored session keeps the last token too, so the next run continues after it.
    if (i + 1 < max_new || stored) session->feed(std::span(&next, 1));
  }
  std::printf("%s\n", line.c_str());
  if (c.stats) {
    const double decode_seconds = seconds_since(start) - prefill_seconds;
    std::fprintf(stderr, "prefill %zu tokens in %.3f s; %lld tokens generated in %.3f s (%.2f ms/token)\n",
                 ids.size(), prefill_seconds, max_new, decode_seconds,
                 max_new > 1 ? 1000.0 * decode_seconds / static_cast<double>(max_new - 1) : 0.0);
  }
  if (stored) stored->save();
  return 0;
}

int cmd_image_features(Args& args) {
  const Common c = take_common(args);
  const std::string image_path = args.take("image");
  const std::string out = args.take("out");
  args.check_all_used();
  const bool stats = c.stats;
  const auto start = std::chrono::steady_clock::now();
  auto model = lightdesk::vision::VisionModel::open(c.model_dir, c.options);
  const lightdesk::vision::PreparedImage image = lightdesk::vision::prepare_image(
      lightdesk::vision::decode_image_file(image_path), model->config().anyres);
  const double prepare_seconds = seconds_since(start);
  const std::vector<float> features = model->image_embeddings(image);
  if (stats)
    std::fprintf(stderr, "%dx%d image, %dx%d grid, %lld tokens: prepared in %.3f s, features in %.3f s\n",
                 image.width, image.height, image.grid_rows, image.grid_columns,
                 static_cast<long long>(image.token_count), prepare_seconds, seconds_since(start) - prepare_seconds);
  const std::int64_t tile = model->config().image_size;
  const std::vector<std::int64_t> grid{image.grid_rows, image.grid_columns};
  lightdesk::write_safetensors(
      out, {{"pixel_values", {static_cast<std::int64_t>(image.tiles.size()), 3, tile, tile}, image.pixel_values, {}},
            {"grid", {2}, {}, grid},
            {"features", {image.token_count, model->config().text_hidden_size}, features, {}}});
  return 0;
}

int cmd_tokenize(Args& args) {
  const std::string model_dir = args.take("model");
  const std::string file = args.take("file");
  args.check_all_used();
  const auto tokenizer = lightdesk::Tokenizer::open(model_dir);
  const auto ids = tokenizer->encode(lightdesk::load_document(file).text);
  std::string line;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ',';
    line += std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
  return 0;
}

int cmd_detokenize(Args& args) {
  const std::string model_dir = args.take("model");
  const auto ids = parse_ids(args.take("ids"));
  args.check_all_used();
  const std::string text = lightdesk::Tokenizer::open(model_dir)->decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::printf("\n");
  return 0;
}

// The language-model input rows of each image, in order (a MiniMax-VL-01 directory).
std::vector<std::vector<float>> image_embeddings(const Common& c, const std::vector<std::string>& image_files) {
  if (image_files.empty()) return {};
  const auto vision_model = lightdesk::vision::VisionModel::open(c.model_dir, c.options);
  std::vector<std::vector<float>> embeddings;
  for (const auto& file : image_files) {
    const auto image = lightdesk::vision::prepare_image(lightdesk::vision::decode_image_file(file),
                                                        vision_model->config().anyres);
    embeddings.push_back(vision_model->image_embeddings(image));
    if (c.stats)
      std::fprintf(stderr, "%s: %dx%d image, %dx%d tiles, %lld tokens\n", file.c_str(), image.width, image.height,
                   image.grid_rows, image.grid_columns, static_cast<long long>(image.token_count));
  }
  return embeddings;
}

// ask: the images, documents and question as one user turn in the model's chat format, then the
// answer (reasoning left out) on standard output. In a stored session the turn continues the
// session's conversation: only the new turn is prefilled, after the stored state, and the
// exchange is kept in the session's messages. (A stored state holds image rows only in its
// computed state: its token ids hold the placeholder id there, so a session whose state is
// refused and recomputed from its ids loses its images.)
int cmd_ask(Args& args) {
  Common c = take_common(args);
  const auto document_files = args.take_all("document");
  const auto image_files = args.take_all("image");
  const std::string question = args.take("question");
  const long long max_new = args.take_optional_int("max-new-tokens", 1).value_or(512);
  const Sampling sampling = take_sampling(args);
  const auto stored_session = take_stored_session(args);
  args.check_all_used();
  if (document_files.empty() && image_files.empty() && !stored_session)
    throw UsageError("missing --document or --image (only a stored session's conversation goes on without)");

  const auto tokenizer = lightdesk::Tokenizer::open(c.model_dir);
  const auto format = lightdesk::ChatFormat::for_model(c.model_dir, *tokenizer);
  std::vector<lightdesk::Document> documents;
  for (const auto& file : document_files) documents.push_back(lightdesk::load_document(file));
  const std::vector<std::vector<float>> images = image_embeddings(c, image_files);

  auto model = lightdesk::Model::open(c.model_dir, c.options);
  auto session = model->create_session();
  const auto stored = attach_stored_session(stored_session, *session, c);
  const std::int64_t start_position = session->position();
  session->set_seed(sampling.seed);

  const auto start = std::chrono::steady_clock::now();
  const auto prompt = lightdesk::document_prompt(
      format, *tokenizer, documents, question, c.options.threads,
      {static_cast<int>(images.size()), /*continues=*/start_position > 0});
  lightdesk::vision::MultimodalInput input{prompt.ids, {}};
  if (!images.empty())
    input = lightdesk::vision::expand_image_placeholders(prompt.ids, *format.image_token(), images,
                                                         model->info().hidden_size);
  if (c.stats) {
    std::fprintf(stderr, "tokenized %zu prompt tokens in %.3f s\n", input.tokens.size(), seconds_since(start));
    // Session positions: the images come first in the turn, so each moves the documents by its
    // tokens less its placeholder.
    const auto shift = start_position + static_cast<std::int64_t>(input.tokens.size() - prompt.ids.size());
    for (const auto& span : prompt.documents) {
      std::fprintf(stderr, "%s: tokens %lld..%lld", span.path.string().c_str(),
                   static_cast<long long>(shift + span.first_token), static_cast<long long>(shift + span.end_token));
      for (const auto& [anchor, token] : span.anchors)
        std::fprintf(stderr, ", page %d at %lld", anchor.page, static_cast<long long>(shift + token));
      std::fprintf(stderr, "\n");
    }
  }

  lightdesk::GenerationOptions options;
  options.max_new_tokens = max_new;
  options.sampling = sampling.params;
  options.stop_token = format.end_of_turn();
  options.prefill.chunk_tokens = c.chunk;
  options.prefill.embedding_overrides = input.embedding_overrides;
  double prefill_seconds = 0.0;
  options.prefill.progress = [&prefill_seconds, show = progress_line()](const lightdesk::FeedProgress& p) {
    prefill_seconds = p.seconds;
    return show(p);
  };
  lightdesk::ChatOutputParser parser(format.family());
  auto print = [](const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  // generate_text prefills, then generates: the generation's share is what the prefill left.
  const auto generation_start = std::chrono::steady_clock::now();
  const auto generated = lightdesk::generate_text(*session, *tokenizer, input.tokens, options,
                                                  [&](std::string_view text) { print(parser.feed(text).answer); });
  print(parser.finish().answer + "\n");
  const double generation_seconds = seconds_since(generation_start) - prefill_seconds;
  for (const auto& call : parser.tool_calls())
    std::fprintf(stderr, "tool call: %s %s\n", call.name.c_str(), call.arguments.c_str());
  if (c.stats)
    std::fprintf(stderr, "%zu prompt tokens read in %.2f s; %zu tokens generated in %.2f s\n", input.tokens.size(),
                 prefill_seconds, generated.size(), generation_seconds);
  if (stored) {
    lightdesk::finish_assistant_turn(*session, generated, format.end_of_turn());
    lightdesk::store::Message asked, answered;
    asked.text = question;
    asked.prompt_tokens = static_cast<std::int64_t>(input.tokens.size());
    asked.prefill_seconds = prefill_seconds;
    answered.text = parser.answer();
    answered.reasoning = parser.reasoning();
    answered.completion_tokens = static_cast<std::int64_t>(generated.size());
    answered.generation_seconds = generation_seconds;
    stored->save_exchange(asked, answered);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string verb = argv[1];
  try {
    Args args(argc, argv);
    if (verb == "info") return cmd_info(args);
    if (verb == "logits") return cmd_logits(args);
    if (verb == "generate") return cmd_generate(args);
    if (verb == "tokenize") return cmd_tokenize(args);
    if (verb == "detokenize") return cmd_detokenize(args);
    if (verb == "ask") return cmd_ask(args);
    if (verb == "image-features") return cmd_image_features(args);
    throw UsageError("unknown command \"" + verb + "\"");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lightdesk-cli: %s (see lightdesk-cli --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightdesk-cli: %s\n", e.what());
    return 1;
  }
}
