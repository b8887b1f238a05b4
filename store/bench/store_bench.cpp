// lightdesk-store-bench: how fast the session store writes and reads a large checkpoint, against
// raw file I/O on the same disk in the same run; whether zstd would pay for the state's bytes;
// and what that means for restoring a MiniMax-Text-01 session instead of prefilling it.
//
// usage: lightdesk-store-bench [--dir DIR] [--gib N | --tokens N] [--runs N] [--zstd] [--fixture MODEL_DIR]
//                              [--page-size N]
// The synthetic state has the real model's shape (70 lightning layers of 64 x 128 x 128 fp32,
// 10 softmax layers of 8 KV heads x 128, keys and values in bf16) and N positions (--tokens) or as
// many as make N GiB. Each of --runs runs writes and reads the raw file and then the store, so that
// every store figure has a raw figure of the same moment beside it (the disk is shared and noisy).
// Files go to DIR (default: the current directory) and are removed at the end.
#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "lightdesk/engine.h"
#include "lightdesk/store.h"

namespace {

using lightdesk::StatePart;
using lightdesk::StatePartKind;
using Clock = std::chrono::steady_clock;

constexpr double kMB = 1e6;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The real MiniMax-Text-01 shape: a softmax layer every 8th layer.
lightdesk::ModelInfo minimax_text_01_shape() {
  lightdesk::ModelInfo info;
  info.directory = "synthetic";
  info.model_type = "minimax_text_01_shape";
  info.fingerprint = "synthetic-minimax-text-01-shape";
  info.num_layers = 80;
  for (int l = 0; l < 80; ++l)
    info.layer_kinds.push_back(l % 8 == 7 ? lightdesk::LayerKind::Softmax : lightdesk::LayerKind::Lightning);
  info.num_heads = 64;
  info.num_kv_heads = 8;
  info.head_dim = 128;
  return info;
}

std::int64_t lightning_floats(const lightdesk::ModelInfo& m) {
  return static_cast<std::int64_t>(m.num_heads) * m.head_dim * m.head_dim;
}
// bf16 K and V of one position over all softmax layers (as the CUDA backend exports them).
std::int64_t kv_bytes_per_position(const lightdesk::ModelInfo& m) {
  return 2LL * m.num_softmax_layers() * m.num_kv_heads * m.head_dim * 2;
}

// Values shaped like a state: normally distributed, so exponents cluster as in real ones.
std::vector<float> normal_floats(std::size_t count, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> values(count);
  for (auto& v : values) v = normal(random);
  return values;
}

std::vector<std::uint16_t> to_bf16(std::span<const float> values) {
  std::vector<std::uint16_t> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &values[i], 4);
    out[i] = static_cast<std::uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);  // round to nearest even
  }
  return out;
}

// The synthetic state, streamed the way Session::export_state streams a real one. The values
// are generated once and reused for every part so that generating them is not timed.
class SyntheticState {
 public:
  SyntheticState(const lightdesk::ModelInfo& model, std::int64_t positions, std::int64_t kv_chunk_tokens)
      : model_(model),
        positions_(positions),
        lightning_(normal_floats(static_cast<std::size_t>(lightning_floats(model)), 1)),
        kv_(to_bf16(normal_floats(static_cast<std::size_t>(model.num_kv_heads * kv_chunk_tokens * model.head_dim), 2))) {}

  void export_state(const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens,
                    std::int64_t kv_first = 0) const {
    for (StatePart part :
         lightdesk::state_layout(model_, positions_, kv_chunk_tokens, kv_first, lightdesk::StateDType::BF16)) {
      part.data = part.kind == StatePartKind::LightningState
                      ? std::as_bytes(std::span<const float>(lightning_))
                      : std::as_bytes(std::span<const std::uint16_t>(kv_).first(
                            static_cast<std::size_t>(model_.num_kv_heads * part.token_count * model_.head_dim)));
      sink(part);
    }
  }

 private:
  const lightdesk::ModelInfo& model_;
  std::int64_t positions_;
  std::vector<float> lightning_;
  std::vector<std::uint16_t> kv_;
};

// Drops the file's pages from the page cache so the next read comes from the disk.
void evict_from_page_cache(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

struct RawResult {
  double write_seconds = 0, read_seconds = 0;
};

// Writes the same parts to a plain file (write + fsync), then reads them back cold.
RawResult raw_file_io(const std::filesystem::path& path, const SyntheticState& state, std::int64_t kv_chunk_tokens,
                      std::int64_t total_bytes) {
  RawResult result;
  const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) throw lightdesk::Error("cannot create " + path.string());
  auto start = Clock::now();
  state.export_state(
      [&](const StatePart& part) {
        const auto bytes = part.data;
        if (::write(out, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
          throw lightdesk::Error("short write to " + path.string());
      },
      kv_chunk_tokens);
  ::fsync(out);
  ::close(out);
  result.write_seconds = seconds_since(start);

  evict_from_page_cache(path);
  std::vector<char> buffer(16 << 20);
  const int in = ::open(path.c_str(), O_RDONLY);
  start = Clock::now();
  std::int64_t read_bytes = 0;
  for (ssize_t n; (n = ::read(in, buffer.data(), buffer.size())) > 0;) read_bytes += n;
  result.read_seconds = seconds_since(start);
  ::close(in);
  if (read_bytes != total_bytes) throw lightdesk::Error("raw read returned a different size");
  std::filesystem::remove(path);
  return result;
}

// zstd on one buffer at one level: ratio (compressed / original) and single-thread speeds.
void report_zstd(const char* what, std::span<const std::byte> data, double write_mbps, double read_mbps) {
  std::vector<char> compressed(ZSTD_compressBound(data.size()));
  std::vector<char> restored(data.size());
  for (int level : {-5, 1, 3}) {
    auto start = Clock::now();
    const std::size_t size = ZSTD_compress(compressed.data(), compressed.size(), data.data(), data.size(), level);
    const double compress_s = seconds_since(start);
    if (ZSTD_isError(size)) throw lightdesk::Error(std::string("zstd: ") + ZSTD_getErrorName(size));
    start = Clock::now();
    const std::size_t back = ZSTD_decompress(restored.data(), restored.size(), compressed.data(), size);
    const double decompress_s = seconds_since(start);
    if (ZSTD_isError(back) || std::memcmp(restored.data(), data.data(), data.size()) != 0)
      throw lightdesk::Error("zstd round trip failed");
    const double ratio = static_cast<double>(size) / static_cast<double>(data.size());
    const double c_mbps = static_cast<double>(data.size()) / kMB / compress_s;
    const double d_mbps = static_cast<double>(data.size()) / kMB / decompress_s;
    // Compressing in line with the store's I/O: time per original MB = compress + ratio x write.
    const double effective_write = 1.0 / (1.0 / c_mbps + ratio / write_mbps);
    const double effective_read = 1.0 / (1.0 / d_mbps + ratio / read_mbps);
    std::printf("| %s | %d | %.3f | %.0f | %.0f | %.0f (vs %.0f) | %.0f (vs %.0f) |\n", what, level, ratio, c_mbps,
                d_mbps, effective_write, write_mbps, effective_read, read_mbps);
  }
}

// Lightning states and K/V of a real (tiny, random-weight) model after `positions` tokens.
void tiny_model_states(const std::filesystem::path& fixture, std::vector<float>& lightning, std::vector<float>& kv) {
  lightdesk::ModelOptions options;
  options.backend = lightdesk::BackendKind::Cpu;
  auto model = lightdesk::Model::open(fixture, options);
  auto session = model->create_session();
  std::vector<lightdesk::TokenId> ids(2048);
  std::mt19937 random(3);
  for (auto& id : ids) id = static_cast<lightdesk::TokenId>(random() % static_cast<unsigned>(model->info().vocab_size));
  session->feed(ids);
  session->export_state([&](const StatePart& part) {
    auto& into = part.kind == StatePartKind::LightningState ? lightning : kv;
    const auto* values = reinterpret_cast<const float*>(part.data.data());  // the CPU backend exports f32
    into.insert(into.end(), values, values + part.numel());
  });
}

std::string take(int& i, int argc, char** argv) {
  if (i + 1 >= argc) throw lightdesk::Error(std::string(argv[i]) + " needs a value");
  return argv[++i];
}

}  // namespace

int main(int argc, char** argv) try {
  std::filesystem::path dir = ".";
  double gib = 4.0;
  std::filesystem::path fixture;
  int page_size = lightdesk::store::Store::Options{}.page_size;
  std::int64_t tokens_wanted = 0;
  int runs = 1;
  bool zstd = false;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "--dir") dir = take(i, argc, argv);
    else if (key == "--gib") gib = std::stod(take(i, argc, argv));
    else if (key == "--tokens") tokens_wanted = std::stoll(take(i, argc, argv));
    else if (key == "--runs") runs = std::stoi(take(i, argc, argv));
    else if (key == "--zstd") zstd = true;
    else if (key == "--fixture") fixture = take(i, argc, argv);
    else if (key == "--page-size") page_size = std::stoi(take(i, argc, argv));
    else throw lightdesk::Error("unknown option " + key + " (usage: lightdesk-store-bench [--dir DIR] [--gib N | --tokens N] [--runs N] [--zstd] [--fixture MODEL_DIR] [--page-size N])");
  }

  const auto model = minimax_text_01_shape();
  const std::int64_t lightning_bytes = model.num_lightning_layers() * lightning_floats(model) * 4;
  const std::int64_t per_position = kv_bytes_per_position(model);
  const auto target = static_cast<std::int64_t>(gib * 1024 * 1024 * 1024);
  const std::int64_t positions =
      tokens_wanted > 0 ? tokens_wanted : std::max<std::int64_t>(1, (target - lightning_bytes) / per_position);
  const std::int64_t total_bytes = lightning_bytes + positions * per_position;
  const auto space = std::filesystem::space(dir);
  if (space.available < static_cast<std::uintmax_t>(total_bytes) * 2 + (1LL << 30))
    throw lightdesk::Error("not enough free space in " + dir.string() + " for two copies of the state");

  lightdesk::store::Store::Options options;
  options.page_size = page_size;
  const std::int64_t kv_chunk_tokens = options.kv_row_bytes / (model.num_kv_heads * model.head_dim * 2);
  const SyntheticState state(model, positions, kv_chunk_tokens);
  std::printf("page size %d; state: %.1f MB lightning (70 layers) + %lld positions x %lld B of bf16 K/V = %.2f GiB\n\n",
              page_size, static_cast<double>(lightning_bytes) / kMB, static_cast<long long>(positions),
              static_cast<long long>(per_position), static_cast<double>(total_bytes) / (1 << 30));

  std::printf("| run | raw write+fsync MB/s | store save+sync MB/s | save / raw | raw cold read MB/s | store cold read MB/s | read / raw | store hot read MB/s |\n|---|---|---|---|---|---|---|---|\n");
  double store_write = 0, store_read = 0;  // the last run's, for the zstd estimate
  for (int run = 1; run <= runs; ++run) {
    const RawResult raw = raw_file_io(dir / "raw-state.bin", state, kv_chunk_tokens, total_bytes);

    const auto db_path = dir / "bench-sessions.db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db_path.string() + suffix);
    std::filesystem::remove_all(db_path.string() + ".kv");
    std::vector<lightdesk::TokenId> tokens(static_cast<std::size_t>(positions), 1);
    double save_s = 0, close_s = 0;
    std::int64_t checkpoint_id = 0;
    {
      std::optional<lightdesk::store::Store> store;
      auto start = Clock::now();
      store.emplace(db_path, options);
      const auto session_id = store->create_session("benchmark");
      checkpoint_id = store->save_checkpoint(
          session_id, lightdesk::store::StateSource{model, tokens, [&](const auto& sink, std::int64_t chunk,
                                                                       std::int64_t kv_from) {
                                                      state.export_state(sink, chunk, kv_from);
                                                    },
                                                    0, lightdesk::StateDType::BF16});
      save_s = seconds_since(start);
      // Closing the last connection copies the WAL into the file and syncs it: then it is on disk.
      start = Clock::now();
      store.reset();
      close_s = seconds_since(start);
      std::fprintf(stderr, "save: %.2f s, close %.2f s\n", save_s, close_s);
    }
    // The database and its span files (the K/V of large spans), evicted and counted together.
    const auto kv_directory = std::filesystem::path(db_path.string() + ".kv");
    std::vector<std::filesystem::path> files{db_path};
    if (std::filesystem::exists(kv_directory))
      for (const auto& entry : std::filesystem::directory_iterator(kv_directory)) files.push_back(entry.path());
    std::int64_t db_size = 0;
    for (const auto& file : files) {
      evict_from_page_cache(file);
      db_size += static_cast<std::int64_t>(std::filesystem::file_size(file));
    }

    double cold_read_s = 0, hot_read_s = 0;
    for (double* seconds : {&cold_read_s, &hot_read_s}) {
      lightdesk::store::Store store(db_path, options);
      const auto start = Clock::now();
      double sum = 0, lightning_s = 0;
      const auto ids = store.read_checkpoint(checkpoint_id, model, [&](const StatePart& part) {
        if (part.kind != StatePartKind::LightningState && lightning_s == 0) lightning_s = seconds_since(start);
        sum += std::to_integer<int>(part.data[0]);
      });
      *seconds = seconds_since(start);
      std::fprintf(stderr, "read: %.2f s, of which lightning %.2f s\n", *seconds, lightning_s);
      if (static_cast<std::int64_t>(ids.size()) != positions || !std::isfinite(sum))
        throw lightdesk::Error("read back a different checkpoint");
    }

    const double mb = static_cast<double>(total_bytes) / kMB;
    store_write = mb / (save_s + close_s);
    store_read = mb / cold_read_s;
    const double raw_write = mb / raw.write_seconds, raw_read = mb / raw.read_seconds;
    std::printf("| %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f | %.0f |\n", run, raw_write, store_write,
                store_write / raw_write, raw_read, store_read, store_read / raw_read, mb / hot_read_s);
    if (run == runs)
      std::printf("\ndatabase and span files: %.2f GiB for %.2f GiB of state (%.4f x); %.0f B per position (state: %lld)\n\n",
                static_cast<double>(db_size) / (1 << 30), static_cast<double>(total_bytes) / (1 << 30),
                static_cast<double>(db_size) / static_cast<double>(total_bytes),
                static_cast<double>(db_size - lightning_bytes) / static_cast<double>(positions),
                  static_cast<long long>(per_position));
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db_path.string() + suffix);
    std::filesystem::remove_all(kv_directory);
  }
  if (!zstd) return 0;

  std::printf("| data | zstd level | compressed/original | compress MB/s | decompress MB/s | write MB/s with zstd (without) | read MB/s with zstd (without) |\n|---|---|---|---|---|---|---|\n");
  const auto synthetic = normal_floats(16 << 20, 5);  // 64 MiB
  report_zstd("synthetic fp32 (normal)", std::as_bytes(std::span<const float>(synthetic)), store_write, store_read);
  const auto synthetic_bf16 = to_bf16(synthetic);
  report_zstd("synthetic bf16 (normal)", std::as_bytes(std::span<const std::uint16_t>(synthetic_bf16)), store_write,
              store_read);
  if (!fixture.empty()) {
    std::vector<float> lightning, kv;
    tiny_model_states(fixture, lightning, kv);
    report_zstd("tiny model lightning fp32", std::as_bytes(std::span<const float>(lightning)), store_write, store_read);
    report_zstd("tiny model K/V fp32", std::as_bytes(std::span<const float>(kv)), store_write, store_read);
    const auto kv_bf16 = to_bf16(kv);
    report_zstd("tiny model K/V bf16", std::as_bytes(std::span<const std::uint16_t>(kv_bf16)), store_write, store_read);
  }

  // Restoring a MiniMax-Text-01 session at the cold read speed measured above, against the
  // prefill estimate of performance-anchors.md (8 x H200, TP8, bf16, ideal kernels): linear
  // layers and MoE 16.5-19 s per 1M tokens, 70 lightning layers 0.85 s per 1M, 10 softmax
  // layers 37.5 s at 1M (quadratic).
  std::printf("\n| tokens | state fp32 K/V (GB) | restore fp32 (s) | state bf16 K/V (GB) | restore bf16 (s) | prefill estimate 8xH200 (s) |\n|---|---|---|---|---|---|\n");
  for (std::int64_t n : {4096LL, 32768LL, 131072LL, 1048576LL}) {
    const double fp32 = static_cast<double>(lightning_bytes + n * per_position * 2);
    const double bf16 = static_cast<double>(lightning_bytes + n * per_position);
    const double millions = static_cast<double>(n) / 1e6;
    const double prefill = millions * (17.75 + 0.85) + 37.5 * millions * millions;
    std::printf("| %lld | %.2f | %.2f | %.2f | %.2f | %.2f |\n", static_cast<long long>(n), fp32 / 1e9,
                fp32 / kMB / store_read, bf16 / 1e9, bf16 / kMB / store_read, prefill);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "lightdesk-store-bench: %s\n", e.what());
  return 1;
}
