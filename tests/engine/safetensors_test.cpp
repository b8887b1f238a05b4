// Checkpoint loading: dtypes, sharding and tensor layouts give the same model; damaged files
// give errors that name the file and tensor.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstring>
#include <limits>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace lightdesk {
namespace {

using test::RawTensor;

const char* kFixture = "tiny-a-m1-rd8";

std::vector<TokenId> prompt() { return {22, 506, 217, 201, 137, 5, 9, 300, 41, 77, 12, 480}; }

std::vector<float> logits_of(const std::filesystem::path& dir) {
  auto model = Model::open(dir, ModelOptions{BackendKind::Cpu, 2, false});
  auto s = model->create_session();
  FeedOptions o;
  o.all_logits = true;
  const auto ids = prompt();
  s->feed(ids, o);
  return {s->logits().begin(), s->logits().end()};
}

std::string open_error(const std::filesystem::path& dir) {
  try {
    Model::open(dir, ModelOptions{BackendKind::Cpu, 1, false});
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::uint16_t to_bf16(float f) {  // round to nearest even
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

float from_bf16(std::uint16_t v) {
  const std::uint32_t bits = static_cast<std::uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<float> floats_of(const RawTensor& t) {
  std::vector<float> v(t.bytes.size() / 4);
  std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
  return v;
}

RawTensor f32_tensor(std::vector<std::int64_t> shape, const std::vector<float>& v) {
  RawTensor t{"F32", std::move(shape), std::vector<std::uint8_t>(v.size() * 4)};
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::copy_fixture(kFixture, dir_.path());
    tensors_ = test::read_as_f32(dir_.path() / "model.safetensors");
  }
  void rewrite() { test::write_raw_safetensors(dir_.path() / "model.safetensors", tensors_); }
  test::ScratchDir dir_;
  std::map<std::string, RawTensor> tensors_;
};

// Rewrites the real file's header in place (same length) after `edit`.
void edit_header(const std::filesystem::path& path, const std::function<void(nlohmann::json&)>& edit) {
  const std::string bytes = test::read_file(path);
  std::uint64_t len;
  std::memcpy(&len, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, len));
  edit(header);
  std::string text = header.dump();
  ASSERT_LE(text.size(), len) << "edited header must fit";
  text.resize(len, ' ');
  test::write_file(path, bytes.substr(0, 8) + text + bytes.substr(8 + len));
}

TEST_F(CheckpointTest, Bf16WeightsEqualTheirFloat32Values) {
  std::map<std::string, RawTensor> rounded_f32, bf16;
  for (const auto& [name, t] : tensors_) {
    const auto v = floats_of(t);
    std::vector<float> rounded(v.size());
    RawTensor b{"BF16", t.shape, std::vector<std::uint8_t>(v.size() * 2)};
    for (std::size_t i = 0; i < v.size(); ++i) {
      const std::uint16_t h = to_bf16(v[i]);
      std::memcpy(b.bytes.data() + 2 * i, &h, 2);
      rounded[i] = from_bf16(h);
    }
    rounded_f32.emplace(name, f32_tensor(t.shape, rounded));
    bf16.emplace(name, std::move(b));
  }
  test::write_raw_safetensors(dir_.path() / "model.safetensors", rounded_f32);
  const auto expected = logits_of(dir_.path());
  test::write_raw_safetensors(dir_.path() / "model.safetensors", bf16);
  EXPECT_EQ(test::max_abs_diff(logits_of(dir_.path()), expected), 0.0);
  EXPECT_EQ(Model::inspect(dir_.path()).bytes_per_dtype.count("BF16"), 1u);
}

TEST_F(CheckpointTest, F16WeightsAreConvertedExactly) {
  // Values exactly representable in half precision (multiples of 1/1024 within +-2).
  std::map<std::string, RawTensor> f32, f16;
  for (const auto& [name, t] : tensors_) {
    auto v = floats_of(t);
    RawTensor h{"F16", t.shape, std::vector<std::uint8_t>(v.size() * 2)};
    for (std::size_t i = 0; i < v.size(); ++i) {
      const int q = static_cast<int>(std::lround(std::clamp(v[i], -1.99f, 1.99f) * 1024.0f));
      v[i] = static_cast<float>(q) / 1024.0f;
      // q/1024 has at most 11 significant bits and no half subnormals: its half is the
      // float's sign, re-biased exponent and top 10 mantissa bits.
      std::uint32_t bits;
      std::memcpy(&bits, &v[i], 4);
      std::uint16_t half = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
      if (q != 0) {
        const std::uint32_t exponent = ((bits >> 23) & 0xffu) - 127 + 15;
        half = static_cast<std::uint16_t>(half | (exponent << 10) | ((bits >> 13) & 0x3ffu));
      }
      std::memcpy(h.bytes.data() + 2 * i, &half, 2);
    }
    f32.emplace(name, f32_tensor(t.shape, v));
    f16.emplace(name, std::move(h));
  }
  test::write_raw_safetensors(dir_.path() / "model.safetensors", f32);
  const auto expected = logits_of(dir_.path());
  test::write_raw_safetensors(dir_.path() / "model.safetensors", f16);
  EXPECT_EQ(test::max_abs_diff(logits_of(dir_.path()), expected), 0.0);
}

TEST_F(CheckpointTest, ShardedCheckpointEqualsTheSingleFile) {
  const auto expected = logits_of(dir_.path());
  std::map<std::string, RawTensor> shard[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  int i = 0;
  for (const auto& [name, t] : tensors_) {
    const int s = i++ % 2;
    shard[s].emplace(name, t);
    index["weight_map"][name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  std::filesystem::remove(dir_.path() / "model.safetensors");
  test::write_raw_safetensors(dir_.path() / "model-00001-of-00002.safetensors", shard[0]);
  test::write_raw_safetensors(dir_.path() / "model-00002-of-00002.safetensors", shard[1]);
  test::write_file(dir_.path() / "model.safetensors.index.json", index.dump());
  EXPECT_EQ(test::max_abs_diff(logits_of(dir_.path()), expected), 0.0);

  std::filesystem::remove(dir_.path() / "model-00002-of-00002.safetensors");
  EXPECT_NE(open_error(dir_.path()).find("shard \"model-00002-of-00002.safetensors\""), std::string::npos);
}

TEST_F(CheckpointTest, FusedExpertTensorsOfTransformers5EqualPerExpertTensors) {
  const auto expected = logits_of(dir_.path());
  const int layers = 4, experts = 4, width = 48, hidden = 64;
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<float> gate_up, down;
    for (int e = 0; e < experts; ++e) {
      const std::string pe = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      for (const char* w : {"w1", "w3"}) {
        const auto v = floats_of(tensors_.at(pe + w + ".weight"));
        gate_up.insert(gate_up.end(), v.begin(), v.end());
      }
      const auto v = floats_of(tensors_.at(pe + "w2.weight"));
      down.insert(down.end(), v.begin(), v.end());
      for (const char* w : {"w1", "w2", "w3"}) tensors_.erase(pe + w + ".weight");
    }
    tensors_["model.layers." + std::to_string(l) + ".mlp.gate.weight"] = tensors_.at(p + "block_sparse_moe.gate.weight");
    tensors_.erase(p + "block_sparse_moe.gate.weight");
    tensors_[p + "mlp.experts.gate_up_proj"] = f32_tensor({experts, 2 * width, hidden}, gate_up);
    tensors_[p + "mlp.experts.down_proj"] = f32_tensor({experts, hidden, width}, down);
  }
  rewrite();
  EXPECT_EQ(test::max_abs_diff(logits_of(dir_.path()), expected), 0.0);
}

TEST_F(CheckpointTest, TruncatedFile) {
  const auto path = dir_.path() / "model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 1000);
  const std::string e = open_error(dir_.path());
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("past the end of the data"), std::string::npos) << e;
  std::filesystem::resize_file(path, 5);
  EXPECT_NE(open_error(dir_.path()).find("truncated file"), std::string::npos);
}

TEST_F(CheckpointTest, HeaderOffsetPastTheEnd) {
  edit_header(dir_.path() / "model.safetensors",
              [](nlohmann::json& h) {
                // Same number of digits, so the header keeps its length, but far past the data.
                auto& end = h["model.norm.weight"]["data_offsets"][1];
                end = std::stoull(std::string(std::to_string(end.get<std::uint64_t>()).size(), '9'));
              });
  const std::string e = open_error(dir_.path());
  EXPECT_NE(e.find("tensor \"model.norm.weight\""), std::string::npos) << e;
  EXPECT_NE(e.find("past the end of the data"), std::string::npos) << e;
}

TEST_F(CheckpointTest, HeaderLengthPastTheEnd) {
  const auto path = dir_.path() / "model.safetensors";
  std::string bytes = test::read_file(path);
  const std::uint64_t huge = 1ULL << 50;
  std::memcpy(bytes.data(), &huge, 8);
  test::write_file(path, bytes);
  EXPECT_NE(open_error(dir_.path()).find("truncated file: header of"), std::string::npos);
}

TEST_F(CheckpointTest, CorruptHeaderJson) {
  const auto path = dir_.path() / "model.safetensors";
  std::string bytes = test::read_file(path);
  bytes[8] = '#';
  test::write_file(path, bytes);
  EXPECT_NE(open_error(dir_.path()).find("corrupt safetensors header"), std::string::npos);
}

TEST_F(CheckpointTest, OverlappingTensors) {
  edit_header(dir_.path() / "model.safetensors", [](nlohmann::json& h) {
    const std::uint64_t start = h["lm_head.weight"]["data_offsets"][0].get<std::uint64_t>();
    h["model.norm.weight"]["data_offsets"] = {start + 4, start + 4 + 256};
  });
  EXPECT_NE(open_error(dir_.path()).find("overlap"), std::string::npos) << open_error(dir_.path());
}

// The tensors must fill the data exactly: a header whose last offset stops short of the data
// was cut from another file or edited.
TEST_F(CheckpointTest, DataLongerThanTheHeaderDeclares) {
  const auto path = dir_.path() / "model.safetensors";
  test::write_file(path, test::read_file(path) + std::string(64, '\0'));
  const std::string e = open_error(dir_.path());
  EXPECT_NE(e.find("model.safetensors: corrupt file: the header's tensors end at byte"), std::string::npos) << e;
}

TEST_F(CheckpointTest, NonFiniteWeightsAreRefusedAtLoad) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto tensors = tensors_;
    std::vector<float> values = floats_of(tensors["model.layers.1.self_attn.out_proj.weight"]);
    values[77] = bad;
    tensors["model.layers.1.self_attn.out_proj.weight"] = f32_tensor({64, 64}, values);
    test::write_raw_safetensors(dir_.path() / "model.safetensors", tensors);
    const std::string e = open_error(dir_.path());
    EXPECT_NE(e.find("tensor \"model.layers.1.self_attn.out_proj.weight\" holds a non-finite value"), std::string::npos)
        << e;
    EXPECT_NE(e.find("at element 77"), std::string::npos) << e;
  }
}

// In place of a weight file or shard: a FIFO would block the open, /dev/zero map as empty.
TEST_F(CheckpointTest, FifoOrDeviceInPlaceOfAWeightFile) {
  const auto path = dir_.path() / "model.safetensors";
  std::filesystem::remove(path);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  EXPECT_NE(open_error(dir_.path()).find("model.safetensors: a FIFO (named pipe), not a regular file"),
            std::string::npos)
      << open_error(dir_.path());
  std::filesystem::remove(path);
  std::filesystem::create_symlink("/dev/zero", path);
  EXPECT_NE(open_error(dir_.path()).find("model.safetensors: a character device"), std::string::npos);
  std::filesystem::remove(path);
  test::write_file(dir_.path() / "model.safetensors.index.json",
                   R"({"weight_map": {"model.norm.weight": "shard.safetensors"}})");
  ASSERT_EQ(::mkfifo((dir_.path() / "shard.safetensors").c_str(), 0600), 0);
  EXPECT_NE(open_error(dir_.path()).find("shard.safetensors: a FIFO"), std::string::npos) << open_error(dir_.path());
  std::filesystem::remove(dir_.path() / "model.safetensors.index.json");
  ASSERT_EQ(::mkfifo((dir_.path() / "model.safetensors.index.json").c_str(), 0600), 0);
  EXPECT_NE(open_error(dir_.path()).find("model.safetensors.index.json: a FIFO"), std::string::npos);
}

TEST_F(CheckpointTest, FifoOrDevicePlaceOfConfig) {
  const auto config = dir_.path() / "config.json";
  std::filesystem::remove(config);
  std::filesystem::create_symlink("/dev/zero", config);
  EXPECT_NE(open_error(dir_.path()).find("config.json: a character device"), std::string::npos)
      << open_error(dir_.path());
  std::filesystem::remove(config);
  ASSERT_EQ(::mkfifo(config.c_str(), 0600), 0);
  EXPECT_NE(open_error(dir_.path()).find("config.json: a FIFO"), std::string::npos);
}

// --out: only a regular file (or nothing) is replaced, through a fresh temporary file beside it;
// a link planted at the old temporary name ("F.tmp") is neither followed nor removed.
TEST(WriteSafetensors, ReplacesOnlyRegularFilesThroughAFreshTemporaryFile) {
  test::ScratchDir dir;
  const std::vector<float> values{1.0f, 2.0f};
  const std::vector<OutputTensor> tensors{{"x", {2}, values, {}}};
  const auto target = dir.path() / "out.safetensors";
  test::write_file(dir.path() / "victim", "keep");
  std::filesystem::create_symlink(dir.path() / "victim", dir.path() / "out.safetensors.tmp");
  write_safetensors(target, tensors);
  write_safetensors(target, tensors);  // over the regular file it wrote
  EXPECT_EQ(read_safetensors(target).at("x").f32, values);
  EXPECT_EQ(test::read_file(dir.path() / "victim"), "keep");
  EXPECT_TRUE(std::filesystem::is_symlink(dir.path() / "out.safetensors.tmp"));
  auto error_of = [&](const std::filesystem::path& path) {
    try {
      write_safetensors(path, tensors);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  ASSERT_EQ(::mkfifo((dir.path() / "fifo").c_str(), 0600), 0);
  std::filesystem::create_symlink("/dev/null", dir.path() / "device-link");
  std::filesystem::create_directory(dir.path() / "folder");
  for (const char* name : {"fifo", "device-link", "folder"})
    EXPECT_NE(error_of(dir.path() / name).find("exists and is not a regular file; refusing to replace it"),
              std::string::npos)
        << name;
  EXPECT_TRUE(std::filesystem::is_fifo(dir.path() / "fifo"));
  // out.safetensors, its .tmp link, victim, fifo, device-link, folder: no temporary file left.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), std::filesystem::directory_iterator()), 6);
}

TEST_F(CheckpointTest, WrongShape) {
  tensors_["model.layers.1.self_attn.out_proj.weight"] = f32_tensor({64, 32}, std::vector<float>(64 * 32, 0.5f));
  rewrite();
  const std::string e = open_error(dir_.path());
  EXPECT_NE(e.find("tensor \"model.layers.1.self_attn.out_proj.weight\" has shape [64, 32], the config needs [64, 64]"),
            std::string::npos)
      << e;
}

TEST_F(CheckpointTest, MissingTensor) {
  tensors_.erase("model.layers.2.block_sparse_moe.experts.3.w2.weight");
  rewrite();
  EXPECT_NE(open_error(dir_.path()).find("missing tensor \"model.layers.2.block_sparse_moe.experts.3.w2.weight\""),
            std::string::npos);
}

TEST_F(CheckpointTest, UnexpectedTensorMeansTheConfigDoesNotMatch) {
  tensors_["model.layers.0.block_sparse_moe.shared_mlp.weight"] = f32_tensor({4}, {1, 2, 3, 4});
  rewrite();
  EXPECT_NE(open_error(dir_.path()).find("unexpected tensor \"model.layers.0.block_sparse_moe.shared_mlp.weight\""),
            std::string::npos);
}

TEST_F(CheckpointTest, UnsupportedDtype) {
  tensors_["model.norm.weight"].dtype = "I32";
  tensors_["model.norm.weight"].bytes.resize(64 * 4);
  rewrite();
  EXPECT_NE(open_error(dir_.path()).find("unsupported dtype \"I32\""), std::string::npos);
}

TEST_F(CheckpointTest, MalformedOrMissingConfig) {
  test::write_file(dir_.path() / "config.json", "{ \"model_type\": ");
  EXPECT_NE(open_error(dir_.path()).find("config.json: malformed JSON"), std::string::npos);
  std::filesystem::remove(dir_.path() / "config.json");
  EXPECT_NE(open_error(dir_.path()).find("config.json: cannot open"), std::string::npos);
  EXPECT_NE(open_error(dir_.path() / "nonexistent").find("cannot open"), std::string::npos);
}

TEST_F(CheckpointTest, NoWeightFiles) {
  std::filesystem::remove(dir_.path() / "model.safetensors");
  EXPECT_NE(open_error(dir_.path()).find("no model.safetensors or model.safetensors.index.json"), std::string::npos);
}

TEST(ModelInfo, DescribesTheModelWithoutLoadingIt) {
  // The CPU backend holds weights and K/V in float32 (the CUDA backend in bf16).
  const ModelInfo info = Model::inspect(test::fixture_dir(kFixture), ModelOptions{BackendKind::Cpu, 1, false});
  EXPECT_EQ(info.num_layers, 4);
  EXPECT_EQ(info.num_lightning_layers(), 3);
  EXPECT_EQ(info.num_softmax_layers(), 1);
  // embed + lm_head + final norm + 4 x (2 norms + router + 4 experts x 3) + 3 lightning + 1 softmax layers
  const std::uint64_t expected = 512 * 64 * 2 + 64 + 4 * (2 * 64 + 4 * 64 + 4 * 3 * 48 * 64) +
                                 3 * (192 * 64 + 64 * 64 + 64 + 64 * 64) + (64 * 64 + 2 * 32 * 64 + 64 * 64);
  EXPECT_EQ(info.parameter_count, expected);
  EXPECT_EQ(info.bytes_per_dtype.at("F32"), expected * 4);
  EXPECT_EQ(info.lightning_state_bytes, 3u * 4 * 16 * 16 * 4);
  EXPECT_EQ(info.kv_bytes_per_token, 1u * 2 * 2 * 16 * 4);
  EXPECT_EQ(info.session_bytes(100), info.lightning_state_bytes + 100 * info.kv_bytes_per_token);
  EXPECT_EQ(info.fingerprint.size(), 32u);
  EXPECT_NE(info.fingerprint, Model::inspect(test::fixture_dir("tiny-a-m1-rd16")).fingerprint);
}

}  // namespace
}  // namespace lightdesk
