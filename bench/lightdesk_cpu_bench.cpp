// lightdesk-cpu-bench: one timed run of the CPU backend through the public engine API, for
// bench/cpu-vs-llamacpp.sh, which runs bench/llamacpp_bench.cpp the same way against llama.cpp.
// Reads the prompt ids (comma-separated, as `lightdesk-cli tokenize` prints them), prefills the
// first PREFILL of them in the backend's chunks, then decodes DECODE greedy tokens one at a time,
// and prints one JSON line: the prefill's and the decode's seconds and tokens/s, and the ids.
// Usage: lightdesk-cpu-bench --model DIR --ids FILE --prefill N [--decode K] [--threads T]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lightdesk/engine.h"

namespace {

std::vector<lightdesk::TokenId> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw lightdesk::Error("cannot read " + path);
  std::vector<lightdesk::TokenId> ids;
  std::string item;
  while (std::getline(in, item, ',')) ids.push_back(std::stoi(item));
  return ids;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, ids_file;
  std::int64_t prefill = 0, decode = 0;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i], value = argv[i + 1];
    if (arg == "--model") model = value;
    else if (arg == "--ids") ids_file = value;
    else if (arg == "--prefill") prefill = std::stoll(value);
    else if (arg == "--decode") decode = std::stoll(value);
    else if (arg == "--threads") threads = std::stoi(value);
    else argc = 0;
  }
  if (model.empty() || ids_file.empty() || prefill <= 0) {
    std::fprintf(stderr, "usage: lightdesk-cpu-bench --model DIR --ids FILE --prefill N [--decode K] [--threads T]\n");
    return 2;
  }
  try {
    const auto ids = read_ids(ids_file);
    if (static_cast<std::int64_t>(ids.size()) < prefill)
      throw lightdesk::Error(ids_file + " holds " + std::to_string(ids.size()) + " ids, fewer than --prefill");
    lightdesk::ModelOptions options;
    options.backend = lightdesk::BackendKind::Cpu;
    options.threads = threads;
    const auto loaded = lightdesk::Model::open(model, options);
    auto session = loaded->create_session();

    auto start = std::chrono::steady_clock::now();
    session->feed(std::span(ids.data(), static_cast<std::size_t>(prefill)));
    const double prefill_s = seconds_since(start);

    std::vector<lightdesk::TokenId> generated;
    start = std::chrono::steady_clock::now();
    for (std::int64_t i = 0; i < decode; ++i) {
      const lightdesk::TokenId next = session->sample({});
      generated.push_back(next);
      session->feed(std::span(&next, 1));
    }
    const double decode_s = seconds_since(start);

    nlohmann::json out = {{"engine", "lightdesk"},
                          {"prefill_tokens", prefill},
                          {"prefill_s", prefill_s},
                          {"prefill_tps", static_cast<double>(prefill) / prefill_s},
                          {"decode_tokens", decode},
                          {"decode_s", decode_s},
                          {"decode_tps", decode > 0 ? static_cast<double>(decode) / decode_s : 0.0},
                          {"ids", generated}};
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightdesk-cpu-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
