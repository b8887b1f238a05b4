// lightdesk-cli: the engine from the command line. Its verbs and flags are a contract (see
// README.md); keep them stable. CLI11 parses the command line: one subcommand per verb, each
// with its options bound to the verb's arguments (add_VERB) and run once they are all read
// (cmd_VERB).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <new>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "lightdesk/conversation.h"
#include "lightdesk/data_directory.h"
#include "lightdesk/engine.h"
#include "lightdesk/expert_patterns.h"
#include "lightdesk/input_files.h"
#include "lightdesk/installed_files.h"
#include "lightdesk/replacing_file.h"
#include "lightdesk/store.h"
#include "lightdesk/text.h"
#include "lightdesk/vision.h"
#include "remote_chat.h"

namespace {

// A mistake in the command line that the parser cannot see (exit code 2, as CLI11's own).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Checks of typed values. CLI11 puts the option's name before the message.
CLI::Validator integer_in(long long min_value, long long max_value = std::numeric_limits<long long>::max()) {
  const std::string range = max_value == std::numeric_limits<long long>::max()
                                ? "an integer >= " + std::to_string(min_value)
                                : "an integer from " + std::to_string(min_value) + " to " + std::to_string(max_value);
  return {[min_value, max_value, range](std::string& text) {
            long long value = 0;
            const char* end = text.data() + text.size();
            const auto [used, error] = std::from_chars(text.data(), end, value);
            if (error != std::errc() || used != end || value < min_value || value > max_value)
              return "needs " + range + ", got \"" + text + "\"";
            return std::string();
          },
          ""};
}

// A finite number greater than 0, and at most 1 for a probability.
CLI::Validator positive_number(bool probability = false) {
  const std::string range = probability ? "a number within (0, 1]" : "a number greater than 0";
  return {[probability, range](std::string& text) {
            double value = 0.0;
            const char* end = text.data() + text.size();
            const auto [used, error] = std::from_chars(text.data(), end, value);
            if (error != std::errc() || used != end || !std::isfinite(value) || !(value > 0.0) ||
                (probability && value > 1.0))
              return "needs " + range + ", got \"" + text + "\"";
            return std::string();
          },
          ""};
}

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
      throw CLI::ValidationError("--ids", "\"" + item + "\" is not a token id");
    }
  }
  if (ids.empty()) throw CLI::ValidationError("--ids", "is empty");
  return ids;
}

// --ids 5,17,42: the ids, parsed as the command line is.
CLI::Option* add_ids(CLI::App& verb, std::vector<lightdesk::TokenId>& ids) {
  return verb.add_option_function<std::string>(
      "--ids", [&ids](const std::string& text) { ids = parse_ids(text); }, "token ids, comma-separated");
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
  bool planned = false;  // --expert-dtype auto: load what the memory planner chooses on this machine
  std::int64_t chunk = 0;  // the backend's own size
  bool stats = false;
};

// --model. Where Lightdesk is installed, a required one defaults to the bundled demo model.
CLI::Option* add_model(CLI::App& verb, std::string& model_dir, const std::string& description,
                       bool required = true) {
  if (!required) return verb.add_option("--model", model_dir, description);
  const auto demo = lightdesk::installed::demo_model_directory();
  if (demo) model_dir = demo->string();
  return verb.add_option("--model", model_dir, description + "; an installed Lightdesk's demo model by default")
      ->required(!demo);
}

// An option whose text the engine reads (`parse`): its Error becomes the option's validation error.
template <typename Parse>
void add_engine_option(CLI::App& verb, const std::string& name, Parse parse, const std::string& description) {
  verb.add_option_function<std::string>(
      name,
      [name, parse](const std::string& text) {
        try {
          parse(text);
        } catch (const lightdesk::Error& e) {
          throw CLI::ValidationError(name, e.what());
        }
      },
      description);
}

// --model and the engine's options, for the verbs that run a model; returns --model.
CLI::Option* add_common(CLI::App& verb, Common& c, bool model_required = true) {
  auto* model = add_model(verb, c.model_dir, "model directory (config.json, safetensors files)", model_required);
  add_engine_option(
      verb, "--backend", [&c](const std::string& name) { c.options.backend = lightdesk::parse_backend_kind(name); },
      "cpu, cuda or auto (the default: CUDA where a GPU is usable)");
  add_engine_option(
      verb, "--devices", [&c](const std::string& list) { c.options.devices = lightdesk::parse_devices(list); },
      "the GPUs the model runs on: indices such as 0,1 or all (default GPU 0; several with --tensor-parallel)");
  verb.add_option("--threads", c.options.threads, "CPU worker threads (default 0: all hardware threads)")
      ->check(integer_in(0, std::numeric_limits<int>::max()));
  verb.add_option("--chunk", c.chunk, "prefill tokens per pass (default 512 on the CPU, 8192 with CUDA)")
      ->check(integer_in(1));
  verb.add_option("--tensor-parallel", c.options.tensor_parallel,
                  "ranks the model is split over, one per GPU of --devices (on the CPU backend simulated ranks on "
                  "threads); default 1")
      ->check(integer_in(1, 1024));
  add_engine_option(
      verb, "--moe-parallel",
      [&c](const std::string& name) { c.options.moe_parallel = lightdesk::parse_moe_parallel(name); },
      "expert (each rank holds whole experts; the default) or tensor (each rank a slice of every expert)");
  add_engine_option(
      verb, "--expert-dtype",
      [&c](const std::string& name) {
        c.planned = name == "auto";
        if (!c.planned) c.options.expert_dtype = lightdesk::parse_expert_format(name);
      },
      "the experts' format: bf16 (the checkpoint's values; the default), int8 or int4 (quantized at the first load "
      "and kept in the data directory's cache), or auto (the memory planner's choice for this machine at the "
      "model's context, with its tensor-parallel degree and GPUs: what lightdesk-cli info shows)");
  verb.add_flag("--rope-full-head", c.options.rope_full_head,
                "rotate whole heads in softmax layers, as native transformers <= 5.17 does");
  verb.add_flag("--cuda-float32", c.options.cuda_float32, "CUDA backend in float32 instead of bf16, for checking");
  verb.add_flag("--stats", c.stats, "timings on standard error");
  return model;
}

// An option that may be left out: `value` holds it when given, checked and converted.
template <typename T>
CLI::Option* add_optional(CLI::App& verb, const std::string& name, std::optional<T>& value,
                          const std::string& description) {
  return verb.add_option_function<T>(name, [&value](const T& v) { value = v; }, description);
}

CLI::Validator non_empty() {
  return {[](std::string& text) { return text.empty() ? std::string("must not be empty") : std::string(); }, ""};
}

// --data-dir DIR: the data directory, when not the environment's (see lightdesk/data_directory.h).
void add_data_dir(CLI::App& verb, std::string& directory) {
  verb.add_option("--data-dir", directory,
                  "data directory (default: $LIGHTDESK_DATA_DIR, else $XDG_DATA_HOME/Lightdesk, else "
                  "~/.local/share/Lightdesk)")
      ->check(non_empty());
}

lightdesk::store::DataDirectory data_directory(const std::string& chosen) {
  return lightdesk::store::DataDirectory(chosen.empty() ? std::nullopt : std::optional<std::filesystem::path>(chosen));
}

// The verb's engine options with the quantized experts' cache in the data directory `data_dir`.
Common with_expert_cache(Common c, const std::string& data_dir) {
  if (c.model_dir.empty()) return c;
  // --expert-dtype auto may quantize: the model's folder, whichever format the planner picks.
  lightdesk::ModelOptions quantized = c.options;
  if (c.planned) quantized.expert_dtype = lightdesk::ExpertFormat::Int8;
  c.options.expert_cache = data_directory(data_dir).with_expert_cache(c.model_dir, quantized).expert_cache;
  return c;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// --session NAME [--session-db FILE] [--data-dir DIR] (see lightdesk::store::NamedSessionState).
struct StoredSessionOptions {
  std::string name;
  std::string db;        // empty: the data directory's session database
  std::string data_dir;  // empty: the environment's
};

void add_stored_session(CLI::App& verb, StoredSessionOptions& s) {
  auto* name = verb.add_option("--session", s.name,
                               "continue the named stored session: load its state before the run, save it after")
                   ->check(non_empty());
  verb.add_option("--session-db", s.db, "the SQLite file of --session (default: the data directory's sessions.sqlite)")
      ->needs(name);
  add_data_dir(verb, s.data_dir);
}

struct StoredSessionArgs {
  std::string db;
  std::string name;
};

std::optional<StoredSessionArgs> stored_session_of(const StoredSessionOptions& s) {
  if (s.name.empty()) return std::nullopt;
  return StoredSessionArgs{s.db.empty() ? data_directory(s.data_dir).session_database().string() : s.db, s.name};
}

// Loads the stored session into `session` (none without --session); save() it after the run.
std::unique_ptr<lightdesk::store::NamedSessionState> attach_stored_session(
    const std::optional<StoredSessionArgs>& stored, lightdesk::Session& session, const Common& c,
    const std::string& system_prompt = {}) {
  if (!stored) return nullptr;
  const auto start = std::chrono::steady_clock::now();
  auto state =
      std::make_unique<lightdesk::store::NamedSessionState>(stored->db, stored->name, session, c.chunk, system_prompt);
  if (!state->notice().empty()) std::fprintf(stderr, "lightdesk-cli: %s\n", state->notice().c_str());
  if (c.stats)
    std::fprintf(stderr, "session \"%s\": %lld tokens restored in %.3f s\n", stored->name.c_str(),
                 static_cast<long long>(session.position()), seconds_since(start));
  return state;
}

// The model of the run verbs (with --expert-dtype auto, the plan the memory planner chooses); with
// --stats, the plan, the backend it runs on, and why not CUDA.
std::unique_ptr<lightdesk::Model> open_model(const Common& c) {
  lightdesk::ModelOptions options = c.options;
  if (c.planned) {
    const lightdesk::LocalLoad planned = lightdesk::plan_local_load(c.model_dir, options);
    options = planned.options;
    if (c.stats) std::fprintf(stderr, "plan: %s\n", planned.plan.summary().c_str());
  }
  auto model = lightdesk::Model::open(c.model_dir, options);
  if (c.stats) {
    const auto backend = model->info().backend;
    const std::string reason = backend == lightdesk::BackendKind::Cpu ? lightdesk::cuda_backend_unavailable_reason() : "";
    std::fprintf(stderr, "backend: %s%s\n", lightdesk::backend_name(backend),
                 reason.empty() ? "" : (" (" + reason + ")").c_str());
  }
  return model;
}

struct InfoArgs {
  Common c;
  std::optional<long long> tokens;
  std::string gpus;  // hypothetical GPUs to plan for ("4x80GB"); empty: this machine's
  int experts_kept = 0;  // plan the pruned mode with this many experts per layer too
  std::string data_dir;
};

CLI::App* add_info(CLI::App& cli, InfoArgs& a) {
  auto* verb = cli.add_subcommand(
      "info",
      "the model's shape, parameters, bytes and the memory of a session; the GPUs; the data directory (alone "
      "without --model)");
  auto* model = add_common(*verb, a.c, /*model_required=*/false);
  add_optional(*verb, "--tokens", a.tokens, "session length for the memory figure (default: the model's context)")
      ->check(integer_in(0))
      ->needs(model);
  verb->add_option("--gpus", a.gpus, "plan for these GPUs instead of this machine's: 4x80GB, 8x141GB, 2x24GB,1x48GB")
      ->check(CLI::Validator(
          [](std::string& text) {
            try {
              lightdesk::parse_gpu_list(text);
              return std::string();
            } catch (const lightdesk::Error& e) {
              return std::string(e.what());
            }
          },
          "LIST"))
      ->needs(model);
  verb->add_option("--experts-kept", a.experts_kept,
                   "also plan the pruned mode (ask --experts-kept) with this many experts per layer")
      ->check(integer_in(1, 1 << 20))
      ->needs(model);
  add_data_dir(*verb, a.data_dir);
  return verb;
}

std::string span_text(long long first, long long count) {
  return count == 0 ? "none" : count == 1 ? std::to_string(first) : std::to_string(first) + "-" + std::to_string(first + count - 1);
}

// The memory plan: every candidate of the engine's policy, the chosen one's ranks, the advice.
void print_plan(const lightdesk::PlanReport& report, const std::string& where) {
  std::printf("plan for %s at %lld tokens: %s\n", where.c_str(), static_cast<long long>(report.context_tokens),
              report.chosen ? report.plans[*report.chosen].summary().c_str() : "nothing this build runs fits");
  // The ranks of the chosen plan, else of the first that fits, else of the first.
  const lightdesk::MemoryPlan* shown = report.chosen ? &report.plans[*report.chosen] : nullptr;
  for (const auto& p : report.plans)
    if (!shown && p.fits) shown = &p;
  if (!shown && !report.plans.empty()) shown = &report.plans.front();
  if (shown) {
    if (!report.chosen) std::printf("layout of %s:\n", shown->summary().c_str());
    for (const auto& r : shown->ranks) {
      const auto& l = r.layout;
      std::printf("  rank %d on %s: heads %s, K/V heads %s, experts %s (width %d), vocabulary rows %s\n", l.rank,
                  r.device.name.c_str(), span_text(l.first_head, l.heads).c_str(),
                  span_text(l.first_kv_head, l.kv_heads).c_str(), span_text(l.first_expert, l.experts).c_str(),
                  l.expert_width, span_text(l.first_vocab_row, l.vocab_rows).c_str());
      std::printf("    weights %s + experts %s%s, lightning state %s, K/V %s per token = %s, workspace %s: %s of %s%s\n",
                  human_bytes(r.weight_bytes).c_str(), human_bytes(r.expert_bytes).c_str(),
                  r.cached_experts_per_layer ? (" (" + std::to_string(r.cached_experts_per_layer) + " cached per layer)").c_str() : "",
                  human_bytes(r.lightning_state_bytes).c_str(), human_bytes(r.kv_bytes_per_token).c_str(),
                  human_bytes(r.kv_bytes).c_str(), human_bytes(r.workspace_bytes).c_str(),
                  human_bytes(r.total_bytes()).c_str(), human_bytes(r.device.memory_bytes).c_str(),
                  r.fits() ? "" : " (does not fit)");
    }
  }
  for (const auto& p : report.plans) {
    std::uint64_t most = 0;
    for (const auto& r : p.ranks) most = std::max(most, r.total_bytes());
    std::printf("  candidate: %s: %s per GPU%s%s, %s\n", p.summary().c_str(), human_bytes(most).c_str(),
                p.host_bytes ? (" + " + human_bytes(p.host_bytes) + " of host memory").c_str() : "",
                p.runnable ? "" : " (not in this build yet)", p.fits ? "fits" : "does not fit");
  }
  for (const auto& line : report.advice) std::printf("  would fit: %s\n", line.c_str());
}

// Each expert format on 1, 2, 4 and 8 GPUs of each size among `request`'s devices (tensor
// parallel over them, at the request's context): the most one GPU needs, and whether it fits.
void print_fit_table(const lightdesk::ModelInfo& info, const lightdesk::PlanRequest& request) {
  std::vector<std::uint64_t> sizes;
  for (const auto& d : request.devices)
    if (std::find(sizes.begin(), sizes.end(), d.memory_bytes) == sizes.end()) sizes.push_back(d.memory_bytes);
  std::sort(sizes.begin(), sizes.end());
  const lightdesk::ExpertFormat formats[] = {lightdesk::ExpertFormat::Bf16, lightdesk::ExpertFormat::Int8,
                                             lightdesk::ExpertFormat::Int4};
  std::vector<std::string> columns;
  std::map<lightdesk::ExpertFormat, std::vector<std::string>> cells;
  for (std::uint64_t size : sizes)
    for (int gpus : {1, 2, 4, 8}) {
      char column[32];
      std::snprintf(column, sizeof column, "%dx%.0fGiB", gpus, static_cast<double>(size) / (1u << 30));
      columns.push_back(column);
      lightdesk::PlanRequest one = request;
      one.devices.assign(static_cast<std::size_t>(gpus), {column, size});
      one.tensor_parallel = gpus;
      one.capabilities = {true, true, true, false, false};  // the formats' fit, built or not
      std::optional<lightdesk::PlanReport> report;
      try {
        report = lightdesk::plan_memory(info, one);
      } catch (const lightdesk::Error&) {  // a degree the heads do not divide
      }
      for (lightdesk::ExpertFormat format : formats) {
        std::string cell = "-";
        for (const auto& p : report ? report->plans : std::vector<lightdesk::MemoryPlan>{})
          if (p.candidate.experts == format && !p.candidate.host_expert_store && p.candidate.experts_kept == 0) {
            std::uint64_t most = 0;
            for (const auto& r : p.ranks) most = std::max(most, r.total_bytes());
            char text[32];
            std::snprintf(text, sizeof text, "%.0f GiB %s", static_cast<double>(most) / (1u << 30),
                          p.fits ? "fits" : "no");
            cell = text;
          }
        cells[format].push_back(cell);
      }
    }
  std::printf("fit at %lld tokens, tensor parallel (GPU memory each needs):\n",
              static_cast<long long>(request.context_tokens));
  std::printf("  %-6s", "");
  for (const auto& column : columns) std::printf("  %-14s", column.c_str());
  std::printf("\n");
  for (lightdesk::ExpertFormat format : formats) {
    std::printf("  %-6s", lightdesk::expert_format_name(format));
    for (const auto& cell : cells[format]) std::printf("  %-14s", cell.c_str());
    std::printf("\n");
  }
}

// The data directory and its cache's size.
void print_data_directory(const lightdesk::store::DataDirectory& data) {
  std::printf("data directory: %s\n", data.path().string().c_str());
  std::printf("cache: %s in %s\n", human_bytes(data.cache_bytes()).c_str(), data.cache().string().c_str());
}

// Physical memory: the one device the CPU backend's simulated ranks share.
std::uint64_t host_memory_bytes() {
  return static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<std::uint64_t>(::sysconf(_SC_PAGE_SIZE));
}

int cmd_info(const InfoArgs& a) {
  const Common& c = a.c;
  const auto data = data_directory(a.data_dir);
  if (c.model_dir.empty()) {
    print_data_directory(data);
    return 0;
  }
  const auto& tokens = a.tokens;
  const lightdesk::ModelInfo info = lightdesk::Model::inspect(c.model_dir, c.options);
  const std::int64_t n = tokens ? *tokens : info.max_context;
  lightdesk::PlanRequest plan;
  plan.devices = a.gpus.empty() ? lightdesk::local_gpus() : lightdesk::parse_gpu_list(a.gpus);
  plan.context_tokens = n;
  plan.cuda_float32 = c.options.cuda_float32;
  plan.chunk_tokens = c.chunk;
  plan.experts_kept = a.experts_kept;
  plan.moe = c.options.moe_parallel;
  // GPUs plan the host expert store (exact mode) in this machine's memory.
  plan.host_memory_bytes = host_memory_bytes();
  if (c.options.tensor_parallel > 1) {
    plan.tensor_parallel = c.options.tensor_parallel;
    if (info.backend == lightdesk::BackendKind::Cpu && a.gpus.empty()) {
      plan.backend = lightdesk::BackendKind::Cpu;
      plan.devices = {{"host memory", host_memory_bytes()}};
      plan.host_memory_bytes = 0;
    }
  }
  plan.capabilities = lightdesk::engine_capabilities(plan.backend);
  // Planned before anything is printed: a layout that does not divide, or more ranks than GPUs,
  // is a one-line error.
  lightdesk::tensor_parallel_layout(info, c.options.tensor_parallel, c.options.moe_parallel);
  const std::optional<lightdesk::PlanReport> report =
      plan.devices.empty() ? std::nullopt : std::optional(lightdesk::plan_memory(info, plan));
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
  std::printf("experts: %d, top %d, width %d, kept in %s\n", info.num_experts, info.experts_per_token,
              info.expert_width, lightdesk::expert_format_name(info.expert_format));
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
  const auto gpus = lightdesk::gpu_devices();
  for (const auto& gpu : gpus)
    std::printf("gpu %d: %s, %s%s\n", gpu.index, gpu.name.c_str(), human_bytes(gpu.total_bytes).c_str(),
                gpu.free_bytes ? (", " + human_bytes(*gpu.free_bytes) + " free").c_str() : "");
  if (gpus.empty()) std::printf("gpus: none (%s)\n", lightdesk::cuda_backend_unavailable_reason().c_str());
  if (!report)
    std::printf("plan: no GPU here (--gpus 4x80GB plans for hypothetical ones)\n");
  else if (plan.backend == lightdesk::BackendKind::Cpu)
    print_plan(*report, "host memory");
  else {
    print_plan(*report, a.gpus.empty() ? "this machine's GPUs" : a.gpus);
    print_fit_table(info, plan);
  }
  print_data_directory(data);
  return 0;
}

struct LogitsArgs {
  Common c;
  std::vector<lightdesk::TokenId> ids;
  std::string out;
  std::optional<long long> decode_from;
  StoredSessionOptions session;
};

CLI::App* add_logits(CLI::App& cli, LogitsArgs& a) {
  auto* verb = cli.add_subcommand("logits", "write the logits of every id to a safetensors file");
  add_common(*verb, a.c);
  add_ids(*verb, a.ids)->required();
  verb->add_option("--out", a.out, "the safetensors file to write: float32 logits [ids, vocabulary]")->required();
  add_optional(*verb, "--decode-from", a.decode_from,
               "prefill the first N ids, then one single-token decode step per later id")
      ->check(integer_in(0));
  add_stored_session(*verb, a.session);
  return verb;
}

int cmd_logits(const LogitsArgs& a) {
  const Common c = with_expert_cache(a.c, a.session.data_dir);
  const auto& ids = a.ids;
  const std::string& out = a.out;
  const auto& decode_from = a.decode_from;
  const auto stored_session = stored_session_of(a.session);
  const auto n = static_cast<std::int64_t>(ids.size());
  const std::int64_t prefill = decode_from ? std::min<std::int64_t>(*decode_from, n) : n;

  auto model = open_model(c);
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

// --greedy | --temperature T --top-p P --top-k N --seed S
struct SamplingOptions {
  bool greedy = false;  // the default too: --greedy only says so
  std::optional<double> temperature, top_p;
  std::optional<int> top_k;
  std::optional<std::uint64_t> seed;
};

void add_sampling(CLI::App& verb, SamplingOptions& s) {
  auto* greedy = verb.add_flag("--greedy", s.greedy, "always the most likely token (the default)");
  auto* temperature = add_optional(verb, "--temperature", s.temperature, "sample at this temperature (default 1)")
                          ->check(positive_number());
  auto* top_p = add_optional(verb, "--top-p", s.top_p, "sample from the smallest set of this probability (default 1)")
                    ->check(positive_number(/*probability=*/true));
  auto* top_k = add_optional(verb, "--top-k", s.top_k, "sample from the K most likely tokens (default 0: all)")
                    ->check(integer_in(0, std::numeric_limits<int>::max()));
  auto* seed = add_optional(verb, "--seed", s.seed, "the sampler's seed (default 0)")->check(integer_in(0));
  greedy->excludes(temperature)->excludes(top_p)->excludes(top_k)->excludes(seed);
}

Sampling sampling_of(const SamplingOptions& s) {
  lightdesk::SamplingParams params;
  if (s.temperature || s.top_p || s.top_k) {
    params.temperature = static_cast<float>(s.temperature.value_or(1.0));
    params.top_p = static_cast<float>(s.top_p.value_or(1.0));
    params.top_k = s.top_k.value_or(0);
  }
  return {params, s.seed.value_or(0)};
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
  auto model = open_model(c);
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

struct GenerateArgs {
  Common c;
  std::optional<std::string> prompt;
  std::vector<lightdesk::TokenId> ids;
  long long max_new_tokens = 0;
  SamplingOptions sampling;
  StoredSessionOptions session;
};

CLI::App* add_generate(CLI::App& cli, GenerateArgs& a) {
  auto* verb = cli.add_subcommand(
      "generate", "continue --ids (printing the new ids) or --prompt (printing text, no chat template)");
  add_common(*verb, a.c);
  auto* ids = add_ids(*verb, a.ids);
  add_optional(*verb, "--prompt", a.prompt, "raw text to continue, up to the end-of-turn token")->excludes(ids);
  verb->add_option("--max-new-tokens", a.max_new_tokens, "tokens to generate")->required()->check(integer_in(0));
  add_sampling(*verb, a.sampling);
  add_stored_session(*verb, a.session);
  return verb;
}

int cmd_generate(const GenerateArgs& a) {
  const Common c = with_expert_cache(a.c, a.session.data_dir);
  const auto& prompt = a.prompt;
  if (!prompt && a.ids.empty()) throw UsageError("missing --ids or --prompt");
  const auto& ids = a.ids;
  const long long max_new = a.max_new_tokens;
  const Sampling sampling = sampling_of(a.sampling);
  const auto stored_session = stored_session_of(a.session);
  if (prompt) return generate_from_prompt(c, *prompt, max_new, sampling, stored_session);
  const lightdesk::SamplingParams& params = sampling.params;

  auto model = open_model(c);
  auto session = model->create_session();
  const auto stored = attach_stored_session(stored_session, *session, c);
  session->set_seed(sampling.seed);
  lightdesk::FeedOptions prefill_options;
  prefill_options.chunk_tokens = c.chunk;
  const auto start = std::chrono::steady_clock::now();
  session->feed(ids, prefill_options);
  const double prefill_seconds = seconds_since(start);
  // Generation stops at the model's context: each id but the last is fed (a stored session's
  // last one too).
  const long long room = model->info().max_context - session->position() + (stored ? 0 : 1);
  if (max_new > room)
    std::fprintf(stderr, "lightdesk-cli: generating %lld tokens, not %lld: the model's context ends there (%lld tokens)\n",
                 std::max(room, 0LL), max_new, static_cast<long long>(model->info().max_context));
  const long long count = std::min(max_new, room);
  std::string line;
  for (long long i = 0; i < count; ++i) {
    const lightdesk::TokenId next = session->sample(params);
    line.append(i ? "," : "").append(std::to_string(next));
    // A stored session keeps the last token too, so the next run continues after it.
    if (i + 1 < count || stored) session->feed(std::span(&next, 1));
  }
  std::printf("%s\n", line.c_str());
  if (c.stats) {
    const double decode_seconds = seconds_since(start) - prefill_seconds;
    std::fprintf(stderr, "prefill %zu tokens in %.3f s; %lld tokens generated in %.3f s (%.2f ms/token)\n",
                 ids.size(), prefill_seconds, count, decode_seconds,
                 count > 1 ? 1000.0 * decode_seconds / static_cast<double>(count - 1) : 0.0);
  }
  if (stored) stored->save();
  return 0;
}

struct ImageFeaturesArgs {
  Common c;
  std::string image;
  std::string out;
};

CLI::App* add_image_features(CLI::App& cli, ImageFeaturesArgs& a) {
  auto* verb = cli.add_subcommand(
      "image-features",
      "MiniMax-VL-01: write an image's float32 pixel_values [tiles, 3, 336, 336] (thumbnail first), int64 grid "
      "[rows, columns] and float32 features [tokens, hidden]");
  add_common(*verb, a.c);
  verb->add_option("--image", a.image, "PNG, JPEG, WebP or TIFF image")->required();
  verb->add_option("--out", a.out, "the safetensors file to write")->required();
  return verb;
}

int cmd_image_features(const ImageFeaturesArgs& a) {
  const Common& c = a.c;
  const std::string& image_path = a.image;
  const std::string& out = a.out;
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

struct TokenizeArgs {
  std::string model_dir;
  std::string file;
};

CLI::App* add_tokenize(CLI::App& cli, TokenizeArgs& a) {
  auto* verb = cli.add_subcommand("tokenize", "print the ids of a document's text, comma-separated");
  add_model(*verb, a.model_dir, "model directory (its tokenizer)");
  verb->add_option("--file", a.file, "the document (any format ask reads)")->required();
  return verb;
}

int cmd_tokenize(const TokenizeArgs& a) {
  const std::string& model_dir = a.model_dir;
  const std::string& file = a.file;
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

struct DetokenizeArgs {
  std::string model_dir;
  std::vector<lightdesk::TokenId> ids;
};

CLI::App* add_detokenize(CLI::App& cli, DetokenizeArgs& a) {
  auto* verb = cli.add_subcommand("detokenize", "print the text of ids");
  add_model(*verb, a.model_dir, "model directory (its tokenizer)");
  add_ids(*verb, a.ids)->required();
  return verb;
}

int cmd_detokenize(const DetokenizeArgs& a) {
  const std::string& model_dir = a.model_dir;
  const auto& ids = a.ids;
  const std::string text = lightdesk::Tokenizer::open(model_dir)->decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::printf("\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Task expert patterns (PreMoe). Patterns live in the session database (the data directory's, or
// --session-db); a model's shipped ones (its directory's expert_patterns.json) join it on use.

// The tokens a pattern is computed from and matched against: the text the model reads for a
// question turn (its documents, then the question), without the chat format's special tokens.
std::vector<lightdesk::TokenId> turn_tokens(const lightdesk::Tokenizer& tokenizer,
                                            const lightdesk::conversation::Turn& turn) {
  return tokenizer.encode(lightdesk::conversation::prompt_text(turn));
}

// The stored patterns of the model, the shipped ones imported first.
std::vector<lightdesk::ExpertPattern> model_patterns(lightdesk::store::Store& store, const lightdesk::ModelInfo& info) {
  store.import_shipped_patterns(info.directory, info.fingerprint);
  return store.expert_patterns(info.fingerprint);
}

// The fingerprint of the checkpoint in DIR, read without loading its weights.
lightdesk::ModelInfo inspect_on_cpu(const std::string& model_dir) {
  lightdesk::ModelOptions cpu;
  cpu.backend = lightdesk::BackendKind::Cpu;
  return lightdesk::Model::inspect(model_dir, cpu);
}

// The pattern nearest the tokens' first-layer router statistic: a model of the first layer alone
// computes it.
const lightdesk::ExpertPattern& nearest_of(std::span<const lightdesk::ExpertPattern> patterns, const Common& c,
                                           std::span<const lightdesk::TokenId> tokens) {
  lightdesk::ModelOptions options = c.options;
  options.purpose = lightdesk::ModelPurpose::FirstLayerRouter;
  const auto router_model = lightdesk::Model::open(c.model_dir, options);
  const std::vector<float> logits = router_model->first_layer_router_logits(tokens);
  const auto nearest = lightdesk::nearest_pattern(logits, static_cast<std::int64_t>(tokens.size()), patterns);
  if (!nearest) throw lightdesk::Error("no expert pattern to match: the query has no tokens");
  return patterns[*nearest];
}

// --experts-kept R [--experts-pattern TASK] [--lost-mass-warning F] | --cached-experts N
struct ExpertOptions {
  int kept = 0;  // 0: all experts
  int cached = 0;  // > 0: exact mode, this many experts per layer cached
  std::string pattern;
  double lost_mass_warning = 0.1;
};

void add_expert_options(CLI::App& verb, ExpertOptions& e) {
  auto* kept = verb.add_option("--experts-kept", e.kept,
                               "pruned mode: keep only this many experts per layer, those a task pattern ranks first "
                               "(the router masks the others); default 0: every expert (exact)")
                   ->check(integer_in(1, 1 << 20));
  verb.add_option("--experts-pattern", e.pattern,
                  "the task pattern of --experts-kept (experts list); default: the stored session's, else the "
                  "pattern nearest the question's first-layer router statistic")
      ->needs(kept)
      ->check(non_empty());
  verb.add_option("--lost-mass-warning", e.lost_mass_warning,
                  "pruned mode: warn when a turn's router probability mass on experts not kept exceeds this share "
                  "(default 0.1)")
      ->needs(kept)
      ->check(CLI::Range(0.0, 1.0));
  verb.add_option("--cached-experts", e.cached,
                  "exact mode: every expert in host memory, this many per layer cached on the backend (at least "
                  "the experts a token routes to), seeded from the task pattern nearest the question; the "
                  "answer is that of every expert resident")
      ->check(integer_in(1, 1 << 20))
      ->excludes(kept);
}

// The experts of a pruned run (ModelOptions::experts): the named pattern, else the one the stored
// session was computed with (a pruned conversation keeps its experts), else the pattern nearest
// `query`. Says which on standard error with --stats.
lightdesk::ExpertSelection choose_experts(const Common& c, const ExpertOptions& e, const std::filesystem::path& db,
                                          const std::optional<StoredSessionArgs>& stored,
                                          std::span<const lightdesk::TokenId> query) {
  const lightdesk::ModelInfo info = inspect_on_cpu(c.model_dir);
  lightdesk::store::Store store(db);
  const std::vector<lightdesk::ExpertPattern> patterns = model_patterns(store, info);
  std::optional<lightdesk::ExpertSelection> session_experts;
  if (stored)
    if (const auto record = store.find_session(stored->name))
      if (const auto checkpoint = store.latest_checkpoint(record->id); checkpoint && checkpoint->experts.pruned())
        session_experts = checkpoint->experts;
  auto by_task = [&](const std::string& task) -> const lightdesk::ExpertPattern& {
    for (const auto& p : patterns)
      if (p.task == task) return p;
    throw lightdesk::Error("no expert pattern \"" + task + "\" for the model in " + c.model_dir +
                           " (see lightdesk-cli experts list)");
  };
  if (!e.pattern.empty()) return by_task(e.pattern).keep(e.kept);
  if (patterns.empty())
    throw lightdesk::Error("--experts-kept: no expert pattern for the model in " + c.model_dir +
                           " (make one with lightdesk-cli experts calibrate)");
  const lightdesk::ExpertPattern& nearest = nearest_of(patterns, c, query);
  if (session_experts && session_experts->experts_kept() == e.kept) {
    // Re-matched every turn: in pruned mode only shown, the conversation keeps its experts.
    if (c.stats)
      std::fprintf(stderr, "experts: the session's %s (this turn's nearest pattern: \"%s\")\n",
                   session_experts->describe().c_str(), nearest.task.c_str());
    return *session_experts;
  }
  const lightdesk::ExpertSelection chosen = nearest.keep(e.kept);
  if (c.stats) std::fprintf(stderr, "experts: %s, the nearest to the question\n", chosen.describe().c_str());
  return chosen;
}

// Exact mode: each layer's cache seeded from the task pattern nearest `query` (matched again
// every turn: it changes only what is cached, never the answer). Says which with --stats.
void seed_expert_cache(lightdesk::Model& model, const Common& c, const std::filesystem::path& db,
                       std::span<const lightdesk::TokenId> query) {
  lightdesk::store::Store store(db);
  const std::vector<lightdesk::ExpertPattern> patterns = model_patterns(store, inspect_on_cpu(c.model_dir));
  const int cached = model.info().cached_experts_per_layer;
  if (patterns.empty()) {
    if (c.stats)
      std::fprintf(stderr, "experts: every expert in host memory, %d per layer cached (no task pattern to seed them)\n",
                   cached);
    return;
  }
  const lightdesk::ExpertPattern& nearest = nearest_of(patterns, c, query);
  model.seed_expert_cache(nearest.keep(cached));
  if (c.stats)
    std::fprintf(stderr,
                 "experts: every expert in host memory, %d per layer cached, seeded from pattern \"%s\" (the nearest "
                 "to the question)\n",
                 cached, nearest.task.c_str());
}

// After a pruned turn: the share of router mass lost, on standard error with --stats, and a
// warning over the threshold; after an exact-mode turn: the share on experts not cached (copied
// in), with --stats. Returns the share (nullopt with every expert resident).
std::optional<double> report_lost_mass(const lightdesk::Session& session, const lightdesk::RoutingTally& before,
                                       const ExpertOptions& e, bool stats) {
  const lightdesk::ModelInfo& info = session.model().info();
  if (!info.experts.pruned() && info.cached_experts_per_layer == 0) return std::nullopt;
  const double share = session.routing_tally().since(before).lost_share();
  if (!info.experts.pruned()) {
    if (stats)
      std::fprintf(stderr, "experts: %d per layer cached; router probability mass on experts not cached (copied in) "
                   "this turn: %.2f%%\n", info.cached_experts_per_layer, 100.0 * share);
    return share;
  }
  if (stats)
    std::fprintf(stderr, "experts: %s; router probability mass lost this turn: %.2f%%\n",
                 session.model().info().experts.describe().c_str(), 100.0 * share);
  if (share > e.lost_mass_warning)
    std::fprintf(stderr,
                 "lightdesk-cli: this turn lost %.1f%% of the router's probability mass to experts that are not "
                 "loaded; leave out --experts-kept for the exact answer\n",
                 100.0 * share);
  return share;
}

// ask: the images, documents and question as one user turn in the model's chat format, then the
// answer (reasoning left out) on standard output. In a stored session the turn continues the
// session's conversation: only the new turn is prefilled, after the stored state, and the
// exchange is kept in the session's messages. (A stored state holds image rows only in its
// computed state: its token ids hold the placeholder id there, so a session whose state is
// refused and recomputed from its ids loses its images.)
struct AskArgs {
  Common c;
  std::vector<std::string> documents;
  std::vector<std::string> images;
  std::string question;
  std::string system;  // the system prompt (empty: none)
  long long max_new_tokens = 512;
  SamplingOptions sampling;
  StoredSessionOptions session;
  ExpertOptions experts;
  lightdesk::remote::RemoteOptions remote;  // --endpoint: a server answers, not a local model
};

CLI::App* add_ask(CLI::App& cli, AskArgs& a) {
  auto* verb = cli.add_subcommand(
      "ask",
      "answer a question about documents and images (at least one, except to go on in a stored session); "
      "--image needs a MiniMax-VL-01 directory");
  // Needed unless --endpoint answers (checked in cmd_ask).
  add_common(*verb, a.c)->required(false);
  verb->add_option("--document", a.documents, "a document (text, HTML, PDF); repeat for more")->allow_extra_args(false);
  verb->add_option("--image", a.images, "an image (PNG, JPEG, WebP, TIFF); repeat for more")->allow_extra_args(false);
  verb->add_option("--question", a.question, "the question")->required();
  verb->add_option("--system", a.system,
                   "a system prompt before the conversation (a stored session keeps the one it began with)");
  verb->add_option("--max-new-tokens", a.max_new_tokens, "longest answer in tokens (default 512)")->check(integer_in(1));
  add_sampling(*verb, a.sampling);
  add_stored_session(*verb, a.session);
  add_expert_options(*verb, a.experts);
  auto* endpoint = verb->add_option("--endpoint", a.remote.endpoint,
                                    "an OpenAI-compatible server (http://host:port[/v1]: lightdesk-server, vLLM, "
                                    "SGLang) answers instead of a local model; documents are sent as text");
  verb->add_option("--api-key", a.remote.api_key, "the --endpoint's API key")->needs(endpoint);
  verb->add_option("--remote-model", a.remote.model, "the model --endpoint runs (default: the first it lists)")
      ->needs(endpoint);
  return verb;
}

// ask --endpoint: the same user turn, as text, answered by the server.
int ask_remote(const AskArgs& a) {
  if (!a.images.empty()) throw UsageError("--image cannot be sent to --endpoint (documents only, as text)");
  if (!a.session.name.empty()) throw UsageError("--session keeps model state, which --endpoint has none of");
  lightdesk::conversation::Turn turn{true, a.question, {}, {}};
  for (const auto& file : a.documents) turn.documents.push_back(lightdesk::load_document(file));
  lightdesk::remote::RemoteRequest request;
  if (!a.system.empty()) request.messages.push_back({"system", a.system});
  request.messages.push_back({"user", lightdesk::conversation::prompt_text(turn)});
  request.max_tokens = a.max_new_tokens;
  const Sampling sampling = sampling_of(a.sampling);
  request.temperature = sampling.params.temperature;
  request.top_p = sampling.params.top_p;
  if (a.sampling.seed) request.seed = *a.sampling.seed;
  lightdesk::remote::ask_remote(a.remote, request, [](const std::string&, const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
  return 0;
}

int cmd_ask(const AskArgs& a) {
  if (!a.remote.endpoint.empty()) return ask_remote(a);
  if (a.c.model_dir.empty()) throw UsageError("--model is required (or --endpoint)");
  Common c = with_expert_cache(a.c, a.session.data_dir);
  const Sampling sampling = sampling_of(a.sampling);
  const auto stored_session = stored_session_of(a.session);
  if (a.documents.empty() && a.images.empty() && !stored_session)
    throw UsageError("missing --document or --image (only a stored session's conversation goes on without)");

  const auto tokenizer = lightdesk::Tokenizer::open(c.model_dir);
  const auto format = lightdesk::ChatFormat::for_model(c.model_dir, *tokenizer);
  // The question as the desktop app asks it: one turn of the shared conversation library.
  lightdesk::conversation::Turn turn{true, a.question, {}, {}};
  for (const auto& file : a.images) turn.images.emplace_back(file);
  std::unique_ptr<lightdesk::vision::VisionModel> vision;
  if (!a.images.empty()) vision = lightdesk::vision::VisionModel::open(c.model_dir, c.options);
  // The question's tokens match it to a task pattern: the experts kept (pruned), or cached (exact).
  std::vector<lightdesk::TokenId> query_tokens;
  const std::filesystem::path db =
      stored_session ? std::filesystem::path(stored_session->db) : data_directory(a.session.data_dir).session_database();
  if (a.experts.kept > 0 || a.experts.cached > 0) {
    lightdesk::conversation::Turn query{true, a.question, {}, {}};
    for (const auto& file : a.documents) query.documents.push_back(lightdesk::load_document(file));
    query_tokens = turn_tokens(*tokenizer, query);
  }
  if (a.experts.kept > 0) c.options.experts = choose_experts(c, a.experts, db, stored_session, query_tokens);
  if (a.experts.cached > 0) {
    c.options.host_expert_store = true;
    c.options.cached_experts_per_layer = a.experts.cached;
  }

  auto model = open_model(c);
  if (a.experts.cached > 0) seed_expert_cache(*model, c, db, query_tokens);
  lightdesk::conversation::Chat chat(*model, *tokenizer, format, vision.get(), c.options.threads);
  lightdesk::Session& session = chat.session();
  const auto stored = attach_stored_session(stored_session, session, c, a.system);
  // A stored session's turns are in its database, not here: the question continues its state.
  if (session.position() > 0) chat.continue_unknown_turns();
  // Each document is read only as far as what is left of the context could hold.
  for (const auto& file : a.documents) {
    turn.documents.push_back(lightdesk::load_document(
        file, lightdesk::document_byte_limit(model->info().max_context - session.position())));
    if (!turn.documents.back().notice.empty())
      std::fprintf(stderr, "lightdesk-cli: %s\n", turn.documents.back().notice.c_str());
  }
  session.set_seed(sampling.seed);

  const auto start = std::chrono::steady_clock::now();
  const std::span<const lightdesk::conversation::Turn> turns(&turn, 1);
  const lightdesk::conversation::Chat::Prompt prompt = chat.prepare(turns, 0, a.system);
  if (c.stats) {
    std::fprintf(stderr, "tokenized %zu prompt tokens in %.3f s\n", prompt.tokens.size(), seconds_since(start));
    for (const auto& span : prompt.documents) {
      std::fprintf(stderr, "%s: tokens %lld..%lld", span.path.string().c_str(), static_cast<long long>(span.first_token),
                   static_cast<long long>(span.end_token));
      for (const auto& [anchor, token] : span.anchors)
        std::fprintf(stderr, ", page %d at %lld", anchor.page, static_cast<long long>(token));
      std::fprintf(stderr, "\n");
    }
  }

  lightdesk::GenerationOptions options;
  options.max_new_tokens = a.max_new_tokens;
  options.sampling = sampling.params;
  options.stop_token = format.end_of_turn();
  options.prefill.chunk_tokens = c.chunk;
  options.prefill.embedding_overrides = prompt.embedding_overrides;
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
  const lightdesk::RoutingTally routing_before = session.routing_tally();
  const auto generation_start = std::chrono::steady_clock::now();
  const auto generated = lightdesk::generate_text(session, *tokenizer, prompt.tokens, options,
                                                  [&](std::string_view text) { print(parser.feed(text).answer); });
  print(parser.finish().answer + "\n");
  const double generation_seconds = seconds_since(generation_start) - prefill_seconds;
  for (const auto& call : parser.tool_calls())
    std::fprintf(stderr, "tool call: %s %s\n", call.name.c_str(), call.arguments.c_str());
  if (c.stats)
    std::fprintf(stderr, "%zu prompt tokens read in %.2f s; %zu tokens generated in %.2f s\n", prompt.tokens.size(),
                 prefill_seconds, generated.size(), generation_seconds);
  const std::optional<double> lost_mass = report_lost_mass(session, routing_before, a.experts, c.stats);
  if (stored) {
    chat.finish(turns, parser.answer(), generated);
    lightdesk::store::Message asked, answered;
    asked.text = a.question;
    asked.prompt_tokens = static_cast<std::int64_t>(prompt.tokens.size());
    asked.prefill_seconds = prefill_seconds;
    answered.text = parser.answer();
    answered.reasoning = parser.reasoning();
    answered.completion_tokens = static_cast<std::int64_t>(generated.size());
    answered.generation_seconds = generation_seconds;
    answered.expert_lost_mass = lost_mass;
    stored->save_exchange(asked, answered);
    if (!stored->notice().empty()) std::fprintf(stderr, "lightdesk-cli: %s\n", stored->notice().c_str());
  }
  return 0;
}

// experts calibrate | list | show: task expert patterns in the session database.
struct ExpertsArgs {
  Common c;
  std::string task;
  std::vector<std::string> files, questions, held_out, held_out_questions;
  std::string score = "mean-probability";
  int tcess_top_k = 1;
  double confidence = -1.0;
  std::string out;
  std::string db, data_dir, fingerprint;
};

// Router statistics of every layer over the files, each read as ask reads a document with its
// question (the one --question, or one per file), in a session of its own.
lightdesk::RouterStatistics calibration_statistics(const lightdesk::Model& model, const lightdesk::Tokenizer& tokenizer,
                                                   const std::vector<std::string>& files,
                                                   const std::vector<std::string>& questions, const ExpertsArgs& a) {
  const lightdesk::ModelInfo& info = model.info();
  lightdesk::RouterStatistics statistics(info.num_layers, info.num_experts,
                                         {a.tcess_top_k, static_cast<float>(a.confidence)});
  lightdesk::FeedOptions feed;
  feed.chunk_tokens = a.c.chunk;
  feed.router_logits = [&statistics](int layer, std::span<const float> logits, std::int64_t rows) {
    statistics.add(layer, logits, rows);
  };
  for (std::size_t i = 0; i < files.size(); ++i) {
    const std::string question = questions.empty() ? "" : questions[questions.size() == 1 ? 0 : i];
    lightdesk::conversation::Turn turn{true, question, {lightdesk::load_document(files[i])}, {}};
    const auto tokens = turn_tokens(tokenizer, turn);
    if (static_cast<std::int64_t>(tokens.size()) > info.max_context)
      throw lightdesk::Error(files[i] + ": " + std::to_string(tokens.size()) + " tokens exceed the model's context of " +
                             std::to_string(info.max_context));
    model.create_session()->feed(tokens, feed);
  }
  return statistics;
}

std::filesystem::path patterns_database(const ExpertsArgs& a) {
  return a.db.empty() ? data_directory(a.data_dir).session_database() : std::filesystem::path(a.db);
}

// The verbs `experts calibrate`, `experts list` and `experts show`.
std::array<CLI::App*, 3> add_experts(CLI::App& cli, ExpertsArgs& a) {
  auto* verb = cli.add_subcommand("experts", "task expert patterns (PreMoe): calibrate, list and show them");
  verb->require_subcommand(1);
  auto* calibrate = verb->add_subcommand(
      "calibrate", "rank each layer's experts by their router statistics over a task's text and store the pattern");
  add_common(*calibrate, a.c);
  calibrate->add_option("--task", a.task, "the task's name (a pattern of the same name is replaced)")
      ->required()
      ->check(non_empty());
  calibrate->add_option("--file", a.files, "calibration text: a document as ask reads it; repeat for more")
      ->required()
      ->allow_extra_args(false);
  calibrate->add_option("--question", a.questions, "the question asked with the files: once for all, or once per file")
      ->allow_extra_args(false);
  add_engine_option(
      *calibrate, "--score",
      [&a](const std::string& name) {
        if (!lightdesk::parse_expert_score(name)) throw lightdesk::Error("tcess or mean-probability, not " + name);
        a.score = name;
      },
      "what ranks the experts: mean-probability (the default: the mean routing probability, which covers more "
      "held-out router mass) or tcess (PreMoe's code)");
  calibrate->add_option("--tcess-top-k", a.tcess_top_k, "TCESS: each token's top-k logits counted (default 1, as PreMoe's code)")
      ->check(integer_in(1, 1 << 20));
  calibrate->add_option("--confidence", a.confidence,
                        "TCESS: count a top-k logit only where its softmax among the top k reaches this (default -1: off)")
      ->check(CLI::Range(-1.0, 1.0));
  calibrate->add_option("--held-out", a.held_out,
                        "held-out text of the same task: prints, for both scores and every count kept, the router "
                        "probability mass their top experts cover there")
      ->allow_extra_args(false);
  calibrate->add_option("--held-out-question", a.held_out_questions,
                        "the question asked with the held-out files: once for all, or once per file")
      ->allow_extra_args(false);
  calibrate->add_option("--out", a.out, "also merge the pattern into this JSON file (a model's expert_patterns.json)");
  auto database = [&a](CLI::App& v) {
    v.add_option("--session-db", a.db, "the SQLite file holding the patterns (default: the data directory's sessions.sqlite)");
    add_data_dir(v, a.data_dir);
  };
  database(*calibrate);
  auto* list = verb->add_subcommand("list", "one line per stored pattern: fingerprint, task, score, calibration tokens");
  auto* model = add_model(*list, a.c.model_dir, "only this model's patterns (its shipped ones imported)", false);
  list->add_option("--fingerprint", a.fingerprint, "only the patterns of this model fingerprint")->excludes(model);
  database(*list);
  auto* show = verb->add_subcommand("show", "a pattern's experts, per layer best first, with their scores");
  add_model(*show, a.c.model_dir, "the model (its shipped patterns imported)");
  show->add_option("--task", a.task, "the pattern's task")->required();
  database(*show);
  return {calibrate, list, show};
}

int cmd_experts_calibrate(const ExpertsArgs& a) {
  const auto tokenizer = lightdesk::Tokenizer::open(a.c.model_dir);
  const auto model = lightdesk::Model::open(a.c.model_dir, a.c.options);
  auto check_questions = [](const std::vector<std::string>& questions, const std::vector<std::string>& files,
                            const std::string& option, const std::string& file_option) {
    if (!questions.empty() && questions.size() != 1 && questions.size() != files.size())
      throw UsageError(option + ": give one, or one per " + file_option + " (" + std::to_string(files.size()) + ")");
  };
  check_questions(a.questions, a.files, "--question", "--file");
  check_questions(a.held_out_questions, a.held_out, "--held-out-question", "--held-out");
  const lightdesk::RouterStatistics statistics = calibration_statistics(*model, *tokenizer, a.files, a.questions, a);
  const lightdesk::ExpertScore score = *lightdesk::parse_expert_score(a.score);
  const lightdesk::ExpertPattern pattern =
      lightdesk::make_expert_pattern(statistics, score, a.task, model->info().fingerprint);
  lightdesk::store::Store store(patterns_database(a));
  store.save_expert_pattern(pattern);
  std::printf("pattern \"%s\" of %s: %s over %lld tokens, %d layers\n", a.task.c_str(),
              model->info().fingerprint.c_str(), a.score.c_str(), static_cast<long long>(pattern.calibration_tokens),
              model->info().num_layers);
  if (!a.held_out.empty()) {
    const lightdesk::RouterStatistics held = calibration_statistics(*model, *tokenizer, a.held_out, a.held_out_questions, a);
    for (int kept = model->info().experts_per_token; kept < model->info().num_experts; ++kept)
      for (lightdesk::ExpertScore s : {lightdesk::ExpertScore::Tcess, lightdesk::ExpertScore::MeanProbability}) {
        const auto selection = lightdesk::make_expert_pattern(statistics, s, a.task, "").keep(kept);
        std::printf("held-out router mass covered by the top %d of %s: %.4f\n", kept, lightdesk::expert_score_name(s),
                    lightdesk::covered_mass(held, selection));
      }
  }
  if (!a.out.empty()) {
    std::vector<lightdesk::ExpertPattern> file;
    if (std::filesystem::exists(a.out))
      file = lightdesk::store::parse_expert_patterns_json(lightdesk::read_regular_file(a.out, 64 << 20), a.out);
    std::erase_if(file, [&](const auto& p) { return p.task == pattern.task && p.model_fingerprint == pattern.model_fingerprint; });
    file.push_back(pattern);
    std::ranges::sort(file, {}, &lightdesk::ExpertPattern::task);
    const std::string json = lightdesk::store::expert_patterns_json(file);
    lightdesk::replace_regular_file(a.out, [&json](const auto& write) { write(json.data(), json.size()); });
  }
  return 0;
}

int cmd_experts_list(const ExpertsArgs& a) {
  lightdesk::store::Store store(patterns_database(a));
  std::optional<std::string> fingerprint;
  if (!a.fingerprint.empty()) fingerprint = a.fingerprint;
  if (!a.c.model_dir.empty()) {
    const lightdesk::ModelInfo info = inspect_on_cpu(a.c.model_dir);
    store.import_shipped_patterns(info.directory, info.fingerprint);
    fingerprint = info.fingerprint;
  }
  for (const auto& p : store.expert_patterns(fingerprint)) {
    std::string score = lightdesk::expert_score_name(p.score);
    if (p.score == lightdesk::ExpertScore::Tcess)
      score += " (top " + std::to_string(p.rule.top_k) + ", confidence " + std::to_string(p.rule.confidence) + ")";
    std::printf("%s  %s  %s, %lld calibration tokens, %zu layers\n", p.model_fingerprint.c_str(), p.task.c_str(),
                score.c_str(), static_cast<long long>(p.calibration_tokens), p.layers.size());
  }
  return 0;
}

int cmd_experts_show(const ExpertsArgs& a) {
  lightdesk::store::Store store(patterns_database(a));
  const lightdesk::ModelInfo info = inspect_on_cpu(a.c.model_dir);
  std::optional<lightdesk::ExpertPattern> pattern;
  for (auto& p : model_patterns(store, info))
    if (p.task == a.task) pattern = std::move(p);
  if (!pattern) throw lightdesk::Error("no expert pattern \"" + a.task + "\" for the model in " + a.c.model_dir);
  std::printf("pattern \"%s\" of %s: %s over %lld tokens\n", pattern->task.c_str(), info.fingerprint.c_str(),
              lightdesk::expert_score_name(pattern->score), static_cast<long long>(pattern->calibration_tokens));
  for (std::size_t l = 0; l < pattern->layers.size(); ++l) {
    std::printf("layer %zu:", l);
    for (const auto& e : pattern->layers[l]) std::printf(" %d (%.4g)", e.expert, e.score);
    std::printf("\n");
  }
  return 0;
}

// cache list | cache clear (--model DIR | --fingerprint F | --all): the data directory's cache/.
struct CacheArgs {
  std::string data_dir;
  std::string model_dir;
  std::string fingerprint;
  bool all = false;
};

// The verbs `cache list` and `cache clear`.
std::pair<CLI::App*, CLI::App*> add_cache(CLI::App& cli, CacheArgs& a) {
  auto* verb = cli.add_subcommand("cache", "list or clear the files derived from models, in the data directory's cache/");
  verb->require_subcommand(1);
  auto* list = verb->add_subcommand("list", "the cache's size, then per model: fingerprint, size, model, what is kept");
  add_data_dir(*list, a.data_dir);
  auto* clear = verb->add_subcommand("clear", "remove the cached files of one model, or all of them");
  auto* model = clear->add_option("--model", a.model_dir, "the model directory whose files to remove");
  auto* fingerprint = clear->add_option("--fingerprint", a.fingerprint,
                                        "the model fingerprint whose files to remove (as cache list shows it)")
                          ->check(non_empty());
  auto* all = clear->add_flag("--all", a.all, "remove every model's files");
  model->excludes(fingerprint)->excludes(all);
  fingerprint->excludes(all);
  add_data_dir(*clear, a.data_dir);
  return {list, clear};
}

int cmd_cache_list(const CacheArgs& a) {
  const auto data = data_directory(a.data_dir);
  std::printf("cache: %s in %s\n", human_bytes(data.cache_bytes()).c_str(), data.cache().string().c_str());
  for (const auto& model : data.cached_models()) {
    std::string parts;
    for (const auto& [name, bytes] : model.parts)
      parts.append(parts.empty() ? "" : ", ").append(name).append(" ").append(human_bytes(bytes));
    std::printf("%s  %s  %s: %s\n", model.fingerprint.c_str(), human_bytes(model.bytes).c_str(),
                model.model.empty() ? "(model not recorded)" : model.model.string().c_str(),
                parts.empty() ? "nothing" : parts.c_str());
  }
  return 0;
}

int cmd_cache_clear(const CacheArgs& a) {
  if (a.model_dir.empty() && a.fingerprint.empty() && !a.all)
    throw UsageError("cache clear needs --model DIR, --fingerprint F or --all");
  std::optional<std::string> fingerprint;
  if (!a.fingerprint.empty()) fingerprint = a.fingerprint;
  if (!a.model_dir.empty()) {
    lightdesk::ModelOptions cpu;  // the fingerprint is the checkpoint's: no device needed
    cpu.backend = lightdesk::BackendKind::Cpu;
    fingerprint = lightdesk::Model::inspect(a.model_dir, cpu).fingerprint;
  }
  const auto data = data_directory(a.data_dir);
  const std::uint64_t freed = data.clear_cache(fingerprint);
  std::printf("removed %s from %s\n", human_bytes(freed).c_str(),
              (fingerprint ? data.cache() / *fingerprint : data.cache()).string().c_str());
  return 0;
}

// " VERB" or " VERB SUBVERB": the verb the command line chose, for the hint to its --help.
std::string chosen_verb(const CLI::App& app) {
  const auto chosen = app.get_subcommands();
  return chosen.empty() ? "" : " " + chosen.front()->get_name() + chosen_verb(*chosen.front());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli("Lightdesk's engine from the command line. Its verbs and options are a contract (README.md).",
               "lightdesk-cli");
  cli.require_subcommand(1);
  cli.footer(
      "`lightdesk-cli VERB --help` lists a verb's options. Exit codes: 2 for a mistake in the command line, 1 for "
      "bad input (model files, ids, documents, databases).");
  InfoArgs info;
  LogitsArgs logits;
  GenerateArgs generate;
  TokenizeArgs tokenize;
  DetokenizeArgs detokenize;
  AskArgs ask;
  ImageFeaturesArgs image_features;
  CacheArgs cache;
  ExpertsArgs experts;
  std::vector<std::pair<CLI::App*, std::function<int()>>> verbs = {
      {add_info(cli, info), [&] { return cmd_info(info); }},
      {add_logits(cli, logits), [&] { return cmd_logits(logits); }},
      {add_generate(cli, generate), [&] { return cmd_generate(generate); }},
      {add_tokenize(cli, tokenize), [&] { return cmd_tokenize(tokenize); }},
      {add_detokenize(cli, detokenize), [&] { return cmd_detokenize(detokenize); }},
      {add_ask(cli, ask), [&] { return cmd_ask(ask); }},
      {add_image_features(cli, image_features), [&] { return cmd_image_features(image_features); }},
  };
  const auto [cache_list, cache_clear] = add_cache(cli, cache);
  verbs.emplace_back(cache_list, [&] { return cmd_cache_list(cache); });
  verbs.emplace_back(cache_clear, [&] { return cmd_cache_clear(cache); });
  const auto [experts_calibrate, experts_list, experts_show] = add_experts(cli, experts);
  verbs.emplace_back(experts_calibrate, [&] { return cmd_experts_calibrate(experts); });
  verbs.emplace_back(experts_list, [&] { return cmd_experts_list(experts); });
  verbs.emplace_back(experts_show, [&] { return cmd_experts_show(experts); });

  if (argc < 2 || std::string(argv[1]) == "help") {
    std::fputs(cli.help().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  try {
    const std::string first = argv[1];
    try {
      if (first.rfind('-', 0) != 0) cli.get_subcommand(first);
    } catch (const CLI::OptionNotFound&) {
      throw UsageError("unknown command \"" + first + "\"");
    }
    cli.parse(argc, argv);
    for (const auto& [verb, run] : verbs)
      if (verb->parsed()) return run();
    throw UsageError("missing command");
  } catch (const CLI::CallForHelp& e) {
    return cli.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "lightdesk-cli: %s (see lightdesk-cli%s --help)\n", e.what(), chosen_verb(cli).c_str());
    return 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lightdesk-cli: %s (see lightdesk-cli%s --help)\n", e.what(), chosen_verb(cli).c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "lightdesk-cli: out of memory: the input needs more memory than this machine has\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightdesk-cli: %s\n", e.what());
    return 1;
  }
}
