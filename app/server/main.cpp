// lightdesk-server: an OpenAI-compatible HTTP server over one model (see README.md, "Local
// server"). Flags here; the server itself is openai_server.h.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <optional>
#include <thread>

#include "lightdesk/data_directory.h"
#include "lightdesk/engine.h"
#include "lightdesk/installed_files.h"
#include "lightdesk/text.h"
#include "openai_server.h"

namespace {

// The server the signal handler stops: set once before signals are taken.
lightdesk::server::Server* running_server = nullptr;

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli("lightdesk-server: an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions, /v1/completions) "
               "over one model");
  std::string model_dir;
  lightdesk::ModelOptions model_options;
  lightdesk::server::ServerOptions options;
  std::size_t max_body_mib = options.max_body_bytes >> 20;
  std::size_t state_cache_mib = options.state_cache_bytes >> 20;
  std::optional<std::filesystem::path> data_dir;
  bool states_in_memory = false;
  // Where Lightdesk is installed, the bundled demo model by default.
  const auto demo = lightdesk::installed::demo_model_directory();
  if (demo) model_dir = demo->string();
  cli.add_option("--model", model_dir,
                 "model directory (config.json, safetensors files, tokenizer); an installed Lightdesk's demo model "
                 "by default")
      ->required(!demo);
  cli.add_option("--host", options.host, "address to listen on (default 127.0.0.1: this machine only)");
  cli.add_option("--port", options.port, "port to listen on (default 8080; 0: any free port, printed)")
      ->check(CLI::Range(0, 65535));
  cli.add_option("--api-key", options.api_key, "ask every request for \"Authorization: Bearer KEY\" (default: none)");
  cli.add_option("--model-name", options.model_name, "the model's id in /v1/models (default: the directory's name)");
  cli.add_option("--max-body-mib", max_body_mib, "largest request body in MiB (default 16)")->check(CLI::Range(1, 1024));
  cli.add_option("--max-tokens-limit", options.max_tokens_limit, "most tokens one answer may ask for (default 4096)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 30));
  cli.add_option("--queue", options.queue_limit, "requests that may wait for the model; more get 429 (default 8)")
      ->check(CLI::Range(0, 256));
  cli.add_option("--state-cache-mib", state_cache_mib,
                 "bytes (MiB) of session states kept between requests, reused by prompts that extend them "
                 "(default 4096; 0: none)");
  cli.add_option("--data-dir", data_dir,
                 "the data directory whose cache/ keeps the states (default: $LIGHTDESK_DATA_DIR, else "
                 "$XDG_DATA_HOME/Lightdesk, else ~/.local/share/Lightdesk)");
  cli.add_flag("--states-in-memory", states_in_memory, "keep the states in memory only, not in the data directory");
  std::string backend = "auto";
  bool planned = false;  // --expert-dtype auto
  cli.add_option("--backend", backend, "cpu, cuda or auto (the default: CUDA where a GPU is usable)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cli.add_option("--threads", model_options.threads, "CPU worker threads (default 0: all hardware threads)")
      ->check(CLI::Range(0, 4096));
  cli.add_option_function<std::string>(
      "--expert-dtype",
      [&model_options, &planned](const std::string& name) {
        try {
          planned = name == "auto";
          if (!planned) model_options.expert_dtype = lightdesk::parse_expert_format(name);
        } catch (const lightdesk::Error& e) {
          throw CLI::ValidationError("--expert-dtype", e.what());
        }
      },
      "the experts' format: bf16 (the default), int8 or int4 (quantized at the first load and kept in the data "
      "directory's cache), or auto (the memory planner's choice for this machine at the model's context)");
  CLI11_PARSE(cli, argc, argv);
  options.max_body_bytes = max_body_mib << 20;
  options.state_cache_bytes = state_cache_mib << 20;
  options.threads = model_options.threads;
  model_options.backend = lightdesk::parse_backend_kind(backend);
  if (options.model_name.empty()) {
    auto path = std::filesystem::path(model_dir);
    options.model_name = (path.has_filename() ? path : path.parent_path()).filename().string();
  }

  try {
    const auto tokenizer = lightdesk::Tokenizer::open(model_dir);
    const auto format = lightdesk::ChatFormat::for_model(model_dir, *tokenizer);
    const lightdesk::store::DataDirectory data(data_dir);
    std::string plan_summary;
    if (planned) {
      lightdesk::LocalLoad load = lightdesk::plan_local_load(model_dir, model_options);
      model_options = std::move(load.options);
      plan_summary = load.plan.summary();
    }
    auto model = lightdesk::Model::open(model_dir, data.with_expert_cache(model_dir, model_options));
    if (!states_in_memory && options.state_cache_bytes > 0)
      options.state_database = data.model_cache(model->info()) / "server-states.sqlite";
    lightdesk::server::Server server(*model, *tokenizer, format, options);
    server.bind();
    if (!is_loopback(options.host) && options.api_key.empty())
      std::fprintf(stderr, "warning: listening on %s without --api-key: anyone who can reach it can use the model\n",
                   options.host.c_str());
    // A client gone mid-answer must not end the server.
    std::signal(SIGPIPE, SIG_IGN);
    running_server = &server;
    std::signal(SIGINT, [](int) { running_server->stop(); });
    std::signal(SIGTERM, [](int) { running_server->stop(); });
    std::printf("lightdesk-server: serving %s on http://%s:%d/v1\n", options.model_name.c_str(), options.host.c_str(),
                server.bound_port());
    // On the CPU, why not a GPU: the CUDA backend's reason, or that --backend cpu asked for it.
    std::string why_cpu;
    if (model->info().backend == lightdesk::BackendKind::Cpu) {
      const std::string reason = lightdesk::cuda_backend_unavailable_reason();
      why_cpu = " (" + (reason.empty() ? std::string("a GPU was not asked for") : reason) + ")";
    }
    std::printf("lightdesk-server: the model runs on the %s%s\n", lightdesk::backend_name(model->info().backend),
                why_cpu.c_str());
    // After the two lines scripts read first.
    if (planned) std::printf("lightdesk-server: the memory planner's choice: %s\n", plan_summary.c_str());
    std::fflush(stdout);
    server.serve();
    running_server = nullptr;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightdesk-server: %s\n", e.what());
    return 1;
  }
  return 0;
}
