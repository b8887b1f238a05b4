// llamacpp-bench: bench/lightdesk_cpu_bench.cpp's run against llama.cpp's C API, for
// bench/cpu-vs-llamacpp.sh, which compiles it against the llama.cpp tree the user names (it is
// not part of Lightdesk's build). The same ids, the same prefill and greedy decode, the same
// JSON line. llama.cpp's defaults otherwise (batch 2048, micro-batch 512, flash attention
// auto), with a float32 K/V cache: Lightdesk's CPU cache is float32 too.
// Usage: llamacpp-bench --model FILE.gguf --ids FILE --prefill N [--decode K] [--threads T]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"

namespace {

std::vector<llama_token> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<llama_token> ids;
  std::string item;
  while (std::getline(in, item, ',')) ids.push_back(std::stoi(item));
  return ids;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void decode_or_throw(llama_context* ctx, llama_token* tokens, int count) {
  if (llama_decode(ctx, llama_batch_get_one(tokens, count)) != 0) throw std::runtime_error("llama_decode failed");
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, ids_file;
  long prefill = 0, decode = 0;
  int threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i], value = argv[i + 1];
    if (arg == "--model") model_path = value;
    else if (arg == "--ids") ids_file = value;
    else if (arg == "--prefill") prefill = std::stol(value);
    else if (arg == "--decode") decode = std::stol(value);
    else if (arg == "--threads") threads = std::stoi(value);
    else argc = 0;
  }
  if (model_path.empty() || ids_file.empty() || prefill <= 0) {
    std::fprintf(stderr, "usage: llamacpp-bench --model FILE.gguf --ids FILE --prefill N [--decode K] [--threads T]\n");
    return 2;
  }
  try {
    auto ids = read_ids(ids_file);
    if (static_cast<long>(ids.size()) < prefill) throw std::runtime_error(ids_file + " holds fewer ids than --prefill");
    llama_log_set([](ggml_log_level level, const char* text, void*) {
      if (level >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
    }, nullptr);
    llama_backend_init();
    llama_model_params model_params = llama_model_default_params();
    model_params.progress_callback = [](float, void*) { return true; };  // no progress dots
    llama_model* model = llama_model_load_from_file(model_path.c_str(), model_params);
    if (!model) throw std::runtime_error("cannot load " + model_path);
    llama_context_params params = llama_context_default_params();
    params.n_ctx = static_cast<uint32_t>(prefill + decode + 16);
    params.n_threads = params.n_threads_batch = threads;
    params.type_k = params.type_v = GGML_TYPE_F32;
    llama_context* ctx = llama_init_from_model(model, params);
    if (!ctx) throw std::runtime_error("cannot create a context");
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const int batch = static_cast<int>(llama_n_batch(ctx));

    auto start = std::chrono::steady_clock::now();
    for (long first = 0; first < prefill; first += batch)
      decode_or_throw(ctx, ids.data() + first, static_cast<int>(std::min<long>(batch, prefill - first)));
    const double prefill_s = seconds_since(start);

    std::vector<llama_token> generated;
    start = std::chrono::steady_clock::now();
    for (long i = 0; i < decode; ++i) {
      const float* logits = llama_get_logits_ith(ctx, -1);
      llama_token next = static_cast<llama_token>(std::max_element(logits, logits + vocab) - logits);
      generated.push_back(next);
      decode_or_throw(ctx, &next, 1);
    }
    const double decode_s = seconds_since(start);

    std::string id_list;
    for (std::size_t i = 0; i < generated.size(); ++i) id_list += (i ? "," : "") + std::to_string(generated[i]);
    std::printf(
        "{\"engine\":\"llama.cpp\",\"prefill_tokens\":%ld,\"prefill_s\":%.6f,\"prefill_tps\":%.3f,"
        "\"decode_tokens\":%ld,\"decode_s\":%.6f,\"decode_tps\":%.3f,\"ids\":[%s]}\n",
        prefill, prefill_s, prefill / prefill_s, decode, decode_s, decode > 0 ? decode / decode_s : 0.0,
        id_list.c_str());
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llamacpp-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
