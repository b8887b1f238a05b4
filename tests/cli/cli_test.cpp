// lightdesk-cli end to end: the verbs and flags of its contract, and its errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <sstream>

#include "test_util.h"

namespace lightdesk {
namespace {

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CliResult run_cli(const std::vector<std::string>& args) {
  const test::ScratchDir scratch;
  const auto out = scratch.path() / "stdout";
  const auto err = scratch.path() / "stderr";
  std::string command = quote(LIGHTDESK_CLI);
  for (const auto& a : args) command.append(" ").append(quote(a));
  command.append(" >").append(quote(out.string())).append(" 2>").append(quote(err.string()));
  const int status = std::system(command.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_file(out), test::read_file(err)};
}

std::string join(const std::vector<TokenId>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) s.append(i ? "," : "").append(std::to_string(ids[i]));
  return s;
}

std::string model_dir(const std::string& fixture = "tiny-a-m1-rd8") { return test::fixture_dir(fixture).string(); }

TEST(Cli, GenerateGreedyPrintsTheReferenceContinuation) {
  for (const auto& fixture : test::fixture_names()) {
    const auto golden = test::load_golden(fixture);
    const auto r = run_cli({"generate", "--model", model_dir(fixture), "--ids",
                            join(test::ids_of(golden.at("greedy.prompt_ids"))), "--max-new-tokens", "16", "--backend", "cpu"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, join(test::ids_of(golden.at("greedy.output_ids"))) + "\n") << fixture;
  }
}

TEST(Cli, GenerateSamplingRepeatsForASeed) {
  const std::vector<std::string> base = {"generate", "--model", model_dir(), "--ids", "1,2,3", "--max-new-tokens",
                                         "12", "--temperature", "1.0", "--top-p", "0.95", "--top-k", "40"};
  auto with_seed = [&](const char* seed) {
    auto args = base;
    args.insert(args.end(), {"--seed", seed});
    return run_cli(args);
  };
  const auto a = with_seed("5"), b = with_seed("5"), c = with_seed("6");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_EQ(run_cli(base).out, run_cli(base).out);  // the seed defaults to 0
  EXPECT_EQ(std::count(a.out.begin(), a.out.end(), ','), 11);
}

TEST(Cli, LogitsPrefillAndDecodeRowsMatchTheReference) {
  const test::ScratchDir dir;
  const auto golden = test::load_golden("tiny-a-hf");
  const auto out = (dir.path() / "logits.safetensors").string();

  auto r = run_cli({"logits", "--model", model_dir("tiny-a-hf"), "--ids",
                    join(test::ids_of(golden.at("prefill.input_ids"))), "--out", out, "--chunk", "7", "--backend", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto logits = read_safetensors(out).at("logits");
  EXPECT_EQ(logits.shape, (std::vector<std::int64_t>{80, 512}));
  EXPECT_LT(test::max_abs_diff(logits.f32, golden.at("prefill.logits").f32), 1e-4);

  auto ids = test::ids_of(golden.at("decode.prompt_ids"));
  const auto steps = test::ids_of(golden.at("decode.step_ids"));
  ids.insert(ids.end(), steps.begin(), steps.end());
  r = run_cli({"logits", "--model", model_dir("tiny-a-hf"), "--ids", join(ids), "--out", out, "--decode-from", "37", "--backend", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  logits = read_safetensors(out).at("logits");
  ASSERT_EQ(logits.shape, (std::vector<std::int64_t>{49, 512}));
  EXPECT_LT(test::max_abs_diff(std::span(logits.f32).subspan(37 * 512), golden.at("decode.logits").f32), 1e-4);
}

TEST(Cli, InfoDescribesTheModelAndTheSessionMemory) {
  const auto r = run_cli({"info", "--model", model_dir(), "--tokens", "1000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("layers: 4 (3 lightning, 1 softmax at 3)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("experts: 4, top 2, width 48"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parameters: 288512"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bytes F32: 1154048"), std::string::npos) << r.out;
  // 3 x 4 x 16 x 16 x 4 bytes of lightning state + 1000 x 256 bytes of K/V.
  EXPECT_NE(r.out.find("session of 1000 tokens: 268288 bytes"), std::string::npos) << r.out;
  const auto default_tokens = run_cli({"info", "--model", model_dir()});
  EXPECT_NE(default_tokens.out.find("session of 4096 tokens"), std::string::npos) << default_tokens.out;
}

// Every bad input: non-zero exit, one line naming the cause.
void expect_one_line_error(const std::vector<std::string>& args, const std::string& cause) {
  const auto r = run_cli(args);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(cause), std::string::npos) << r.err;
}

TEST(Cli, BadInputGivesOneLineCause) {
  const test::ScratchDir dir;
  const auto out = (dir.path() / "x.safetensors").string();
  expect_one_line_error({"generate", "--model", "/nonexistent", "--ids", "1", "--max-new-tokens", "1"},
                        "/nonexistent/config.json: cannot open");
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1,x", "--max-new-tokens", "1"},
                        "\"x\" is not a token id");
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1,512", "--max-new-tokens", "1"},
                        "token id 512 (at index 1) is outside the vocabulary (0..511)");
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1"}, "missing --max-new-tokens");
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1", "--max-new-tokens", "1", "--greedy",
                         "--temperature", "0.5"},
                        "--greedy excludes");
  expect_one_line_error({"logits", "--model", model_dir(), "--ids", "1", "--out", out, "--bogus", "1"},
                        "unknown or misplaced option --bogus");
  expect_one_line_error({"logits", "--model", model_dir(), "--ids", "1", "--out", out, "--backend", "tpu"},
                        "unknown backend \"tpu\"");
  expect_one_line_error({"frobnicate"}, "unknown command \"frobnicate\"");
  expect_one_line_error({"logits", "--model", model_dir(), "--ids", "1", "--out", "/nonexistent/dir/x.safetensors"},
                        "/nonexistent/dir/x.safetensors: cannot create");
}

}  // namespace
}  // namespace lightdesk
