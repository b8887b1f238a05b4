// lightdesk-cli end to end: the verbs and flags of its contract, and its errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

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

// Runs the CLI with `args`, and with `environment` ("NAME=value") added to its environment.
CliResult run_cli(const std::vector<std::string>& args, const std::vector<std::string>& environment = {}) {
  const test::ScratchDir scratch;
  const auto out = scratch.path() / "stdout";
  const auto err = scratch.path() / "stderr";
  std::string command = "env";
  for (const auto& variable : environment) command.append(" ").append(quote(variable));
  command.append(" ").append(quote(LIGHTDESK_CLI));
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
  // One line per GPU, or one line saying why there is none (no CUDA plugin, no device).
  const bool gpu = r.out.find("\ngpu 0: ") != std::string::npos;
  EXPECT_NE(gpu, r.out.find("\ngpus: none (the cuda backend is not available: ") != std::string::npos) << r.out;
  // With --stats, a run says which backend it took, and on the CPU why not CUDA.
  const auto stats = run_cli({"generate", "--model", model_dir(), "--ids", "1", "--max-new-tokens", "1", "--stats"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  EXPECT_NE(stats.err.find(gpu ? "backend: cuda\n" : "backend: cpu (the cuda backend is not available: "),
            std::string::npos)
      << stats.err;
}

// The memory plan for hypothetical GPUs, from the released config and index alone (no weights):
// the per-rank layout a tensor-parallel run would use and what would fit (the figures are
// checked in tests/engine/memory_plan_test.cpp).
TEST(Cli, InfoPlansTheRealModelOnHypotheticalGpus) {
  const std::string real = (test::data_dir() / "real" / "MiniMax-Text-01").string();
  const auto r = run_cli({"info", "--model", real, "--gpus", "8x141GB", "--tokens", "32768", "--backend", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: 456089655296"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("plan for 8x141GB at 32768 tokens: nothing this build runs fits"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layout of bf16 weights, tensor parallel over 8 GPUs:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 7 on 141 GiB: heads 56-63, K/V heads 7, experts 28-31 (width 9216), vocabulary rows "
                       "175056-200063"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("would fit: bf16 weights, tensor parallel over 8 GPUs would fit (not in this build yet)"),
            std::string::npos)
      << r.out;
  const auto small = run_cli({"info", "--model", real, "--gpus", "2x24GB,1x48GB", "--tokens", "4096", "--backend", "cpu"});
  ASSERT_EQ(small.exit_code, 0) << small.err;
  EXPECT_NE(small.out.find("would fit: int4 experts: 8 GPUs of 48 GiB (not in this build yet)"), std::string::npos)
      << small.out;
  const auto demo = run_cli({"info", "--model", model_dir(), "--gpus", "1x24GB"});
  EXPECT_NE(demo.out.find("plan for 1x24GB at 4096 tokens: bf16 weights on 1 GPU"), std::string::npos) << demo.out;
}

// Every bad input: its exit code (2 for the command line, 1 for the input it names), one line
// naming the cause.
void expect_one_line_error(const std::vector<std::string>& args, const std::string& cause, int exit_code) {
  const auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, exit_code) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(cause), std::string::npos) << "expected \"" << cause << "\" in " << r.err;
}

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// info prints each rank's part; generate at every layout gives the single-rank ids; a layout
// that does not divide is a one-line error naming the count.
TEST(Cli, TensorParallelLayouts) {
  const auto tp = test::fixture_dir("tiny-tp-6h3kv8e").string();
  const auto r = run_cli({"info", "--model", tp, "--tensor-parallel", "3", "--backend", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("float32 weights in host memory, tensor parallel over 3 ranks"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 2 on host memory (1/3): heads 4-5, K/V heads 2, experts 6-7 (width 24), vocabulary "
                       "rows 66-96"),
            std::string::npos)
      << r.out;
  const auto tensor = run_cli({"info", "--model", tp, "--tensor-parallel", "6", "--moe-parallel", "tensor",
                               "--backend", "cpu"});
  ASSERT_EQ(tensor.exit_code, 0) << tensor.err;
  EXPECT_NE(tensor.out.find("rank 5 on host memory (1/6): heads 5, K/V heads 2, experts 0-7 (width 4)"),
            std::string::npos)
      << tensor.out;
  const std::vector<std::string> generate{"generate", "--model", tp, "--ids", "5,17,42,9", "--max-new-tokens", "8",
                                          "--backend", "cpu"};
  const auto single = run_cli(generate);
  ASSERT_EQ(single.exit_code, 0) << single.err;
  for (const char* moe : {"expert", "tensor"}) {
    auto args = generate;
    args.insert(args.end(), {"--tensor-parallel", "6", "--moe-parallel", moe});
    const auto parallel = run_cli(args);
    ASSERT_EQ(parallel.exit_code, 0) << parallel.err;
    EXPECT_EQ(parallel.out, single.out) << moe;
  }
  expect_one_line_error({"info", "--model", tp, "--tensor-parallel", "4"}, "6 query heads", 1);
  expect_one_line_error({"info", "--model", tp, "--tensor-parallel", "2"}, "3 K/V heads", 1);
  expect_one_line_error({"info", "--model", tp, "--tensor-parallel", "3", "--gpus", "2x80GB"},
                        "the plan has only 2 GPUs", 1);
  expect_one_line_error({"generate", "--model", tp, "--ids", "1", "--max-new-tokens", "1", "--tensor-parallel", "3",
                         "--moe-parallel", "pipeline"},
                        "--moe-parallel", 2);
}

TEST(Cli, BadInputGivesOneLineCause) {
  expect_one_line_error({"generate", "--model", "/nonexistent", "--ids", "1", "--max-new-tokens", "1"},
                        "/nonexistent/config.json: cannot open", 1);
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1,512", "--max-new-tokens", "1"},
                        "token id 512 (at index 1) is outside the vocabulary (0..511)", 1);
  expect_one_line_error({"logits", "--model", model_dir(), "--ids", "1", "--out", "/nonexistent/dir/x.safetensors"},
                        "/nonexistent/dir/x.safetensors: cannot create", 1);
}

TEST(Cli, CommandLineMistakesNameTheOption) {
  const test::ScratchDir dir;
  const auto out = (dir.path() / "x.safetensors").string();
  const std::vector<std::string> generate = {"generate", "--model", model_dir(), "--ids", "1"};
  const auto generate_one = with(generate, {"--max-new-tokens", "1"});
  const std::vector<std::string> logits = {"logits", "--model", model_dir(), "--ids", "1", "--out", out};
  expect_one_line_error({"frobnicate"}, "unknown command \"frobnicate\"", 2);
  expect_one_line_error(generate, "--max-new-tokens is required", 2);
  expect_one_line_error({"generate", "--model", model_dir(), "--max-new-tokens", "1"}, "missing --ids or --prompt", 2);
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1,x", "--max-new-tokens", "1"},
                        "--ids: \"x\" is not a token id", 2);
  expect_one_line_error({"generate", "--model", model_dir(), "--ids", "1,-2", "--max-new-tokens", "1"},
                        "--ids: \"-2\" is not a token id", 2);
  expect_one_line_error(with(generate, {"--max-new-tokens", "-1"}), "--max-new-tokens: needs an integer >= 0, got \"-1\"", 2);
  expect_one_line_error(with(generate, {"--max-new-tokens", "x"}), "--max-new-tokens: needs an integer >= 0", 2);
  expect_one_line_error(with(generate_one, {"--greedy", "--temperature", "0.5"}), "--greedy excludes --temperature", 2);
  expect_one_line_error(with(generate_one, {"--temperature", "0"}), "--temperature: needs a number greater than 0", 2);
  expect_one_line_error(with(generate_one, {"--temperature", "nan"}), "--temperature: needs a number greater than 0", 2);
  expect_one_line_error(with(generate_one, {"--top-p", "1.5"}), "--top-p: needs a number within (0, 1]", 2);
  expect_one_line_error(with(generate_one, {"--top-p", "0"}), "--top-p: needs a number within (0, 1]", 2);
  expect_one_line_error(with(generate_one, {"--top-k", "-1"}), "--top-k: needs an integer from 0 to", 2);
  expect_one_line_error(with(generate_one, {"--seed", "-3"}), "--seed: needs an integer >= 0", 2);
  expect_one_line_error(with(generate_one, {"--threads", "x"}), "--threads: needs an integer from 0 to", 2);
  expect_one_line_error(with(generate_one, {"--chunk", "0"}), "--chunk: needs an integer >= 1, got \"0\"", 2);
  expect_one_line_error(with(generate_one, {"--model", model_dir()}), "--model", 2);  // given twice
  expect_one_line_error(with(generate_one, {"--prompt", "text"}), "--ids excludes --prompt", 2);
  expect_one_line_error(with(logits, {"--decode-from", "x"}), "--decode-from: needs an integer >= 0", 2);
  expect_one_line_error(with(logits, {"--bogus", "1"}), "--bogus", 2);
  expect_one_line_error(with(logits, {"--backend", "tpu"}), "--backend: unknown backend \"tpu\"", 2);
  expect_one_line_error(with(logits, {"--session-db", "x.sqlite"}), "--session-db requires --session", 2);
  expect_one_line_error({"logits", "--model", model_dir(), "--ids", "1", "--out"}, "--out", 2);  // no value
  expect_one_line_error({"info", "--model", model_dir(), "--tokens", "-1"}, "--tokens: needs an integer >= 0", 2);
  expect_one_line_error({"info", "--tokens", "5"}, "--tokens requires --model", 2);
  expect_one_line_error({"info", "--model", model_dir(), "--gpus", "4x"}, "\"4x\" is not COUNTxSIZE like 4x80GB", 2);
  expect_one_line_error({"ask", "--model", model_dir(), "--question", "?", "--max-new-tokens", "0"},
                        "--max-new-tokens: needs an integer >= 1", 2);
  expect_one_line_error({"cache"}, "A subcommand is required", 2);
  expect_one_line_error({"cache", "clear"}, "cache clear needs --model DIR, --fingerprint F or --all", 2);
  expect_one_line_error({"cache", "clear", "--fingerprint", "ab", "--all"}, "--fingerprint excludes --all", 2);
}

TEST(Cli, EveryVerbHasItsOwnHelp) {
  const std::map<std::string, std::vector<std::string>> options = {
      {"info", {"--model", "--tokens", "--gpus", "--data-dir", "--backend", "--threads", "--chunk", "--rope-full-head",
                "--cuda-float32", "--stats"}},
      {"logits", {"--ids", "--out", "--decode-from", "--session", "--session-db", "--data-dir"}},
      {"generate", {"--ids", "--prompt", "--max-new-tokens", "--greedy", "--temperature", "--top-p", "--top-k",
                    "--seed", "--session", "--session-db"}},
      {"tokenize", {"--model", "--file"}},
      {"detokenize", {"--model", "--ids"}},
      {"ask", {"--document", "--image", "--question", "--max-new-tokens", "--greedy", "--session"}},
      {"image-features", {"--image", "--out", "--cuda-float32"}},
      {"cache", {"list", "clear"}},
      {"experts", {"calibrate", "list", "show"}},
  };
  const auto all = run_cli({"--help"});
  EXPECT_EQ(all.exit_code, 0);
  for (const auto& [verb, names] : options) {
    EXPECT_NE(all.out.find(verb), std::string::npos) << verb;
    const auto help = run_cli({verb, "--help"});
    EXPECT_EQ(help.exit_code, 0) << verb;
    for (const auto& name : names) EXPECT_NE(help.out.find(name), std::string::npos) << verb << " " << name;
  }
  EXPECT_NE(run_cli({"cache", "clear", "--help"}).out.find("--all"), std::string::npos);
  EXPECT_NE(run_cli({"experts", "calibrate", "--help"}).out.find("--confidence"), std::string::npos);
  EXPECT_NE(run_cli({"ask", "--help"}).out.find("--experts-kept"), std::string::npos);
  EXPECT_EQ(run_cli({"help"}).out, all.out);
  const auto none = run_cli({});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_EQ(none.err, all.out);
}

// Each flag that takes no value works last and in the middle of the command line, where it
// must not take the next option as its value.
TEST(Cli, FlagsTakeNoValueLastOrInTheMiddle) {
  const auto golden = test::load_golden("tiny-a-m1-rd8");
  const auto prompt = join(test::ids_of(golden.at("greedy.prompt_ids")));
  const auto expected = join(test::ids_of(golden.at("greedy.output_ids"))) + "\n";
  const std::vector<std::string> generate = {"generate", "--model", model_dir(), "--ids", prompt};
  for (const auto& args : {with(generate, {"--max-new-tokens", "16", "--greedy"}),
                           with(generate, {"--greedy", "--max-new-tokens", "16"})}) {
    const auto r = run_cli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, expected);
  }

  const test::ScratchDir dir;
  // logits with the flag placed last, then in the middle (before --ids); the logits written.
  auto logits = [&](const std::string& flag, bool last, const std::string& name) {
    const auto out = (dir.path() / name).string();
    std::vector<std::string> args = {"logits", "--model", model_dir(), "--backend", "cpu"};
    if (!flag.empty() && !last) args.push_back(flag);
    args.insert(args.end(), {"--ids", "1,2,3,4,5,6,7,8", "--out", out});
    if (!flag.empty() && last) args.push_back(flag);
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << flag << (last ? " last: " : " in the middle: ") << r.err;
    return std::make_pair(r, test::read_file(out));
  };
  const auto plain = logits("", true, "plain.safetensors").second;
  ASSERT_FALSE(plain.empty());
  for (const bool last : {true, false}) {
    const auto [stats, stats_logits] = logits("--stats", last, "stats.safetensors");
    EXPECT_NE(stats.err.find("prefill 8 tokens in"), std::string::npos) << stats.err;
    EXPECT_EQ(stats_logits, plain);
    // Rotating whole heads changes a model whose rotary dims (8) are fewer than its head dims (16).
    EXPECT_NE(logits("--rope-full-head", last, "rope.safetensors").second, plain);
    EXPECT_EQ(logits("--rope-full-head", last, "rope.safetensors").second,
              logits("--rope-full-head", !last, "rope-other.safetensors").second);
    // On the CPU it changes nothing; it is a flag there too.
    EXPECT_EQ(logits("--cuda-float32", last, "f32.safetensors").second, plain);
  }
  // The command that failed before: --cuda-float32 last after --backend cuda. Without a GPU the
  // backend's error, not the command line's.
  const auto out = (dir.path() / "cuda.safetensors").string();
  for (const auto& args :
       {std::vector<std::string>{"logits", "--model", model_dir(), "--ids", "1,2", "--out", out, "--backend", "cuda",
                                 "--cuda-float32"},
        std::vector<std::string>{"logits", "--model", model_dir(), "--cuda-float32", "--backend", "cuda", "--ids",
                                 "1,2", "--out", out}}) {
    const auto r = run_cli(args);
    EXPECT_NE(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.err.find("--cuda-float32"), std::string::npos) << r.err;
  }
}

TEST(Cli, InfoShowsTheDataDirectoryFromOptionOrEnvironment) {
  const test::ScratchDir dir;
  const auto data = (dir.path() / "data").string();
  const std::string lines = "data directory: " + data + "\ncache: 0 B in " + data + "/cache\n";
  const auto chosen = run_cli({"info", "--data-dir", data});
  ASSERT_EQ(chosen.exit_code, 0) << chosen.err;
  EXPECT_EQ(chosen.out, lines);
  EXPECT_EQ(run_cli({"info"}, {"LIGHTDESK_DATA_DIR=" + data}).out, lines);
  EXPECT_EQ(run_cli({"info"}, {"LIGHTDESK_DATA_DIR=", "XDG_DATA_HOME=" + dir.path().string()}).out,
            "data directory: " + dir.path().string() + "/Lightdesk\ncache: 0 B in " + dir.path().string() +
                "/Lightdesk/cache\n");
  // --data-dir wins over the environment; with a model, after the model's lines.
  const auto with_model = run_cli({"info", "--model", model_dir(), "--data-dir", data}, {"LIGHTDESK_DATA_DIR=/elsewhere"});
  ASSERT_EQ(with_model.exit_code, 0) << with_model.err;
  EXPECT_NE(with_model.out.find("layers: 4"), std::string::npos);
  EXPECT_EQ(with_model.out.substr(with_model.out.size() - lines.size()), lines);
}

std::string fingerprint_of(const std::string& model) {
  const auto info = run_cli({"info", "--model", model, "--data-dir", "/nonexistent"}).out;
  const auto at = info.find("fingerprint: ");
  return info.substr(at + 13, info.find('\n', at) - at - 13);
}

// --expert-dtype int8: the first run quantizes and keeps the experts in the data directory's
// cache (cache list shows the file), the second reads them and prints the same ids.
TEST(Cli, QuantizedExpertsAreKeptInTheCache) {
  const test::ScratchDir dir;
  const auto data = dir.path() / "data";
  const std::vector<std::string> generate = {"generate", "--model", model_dir(), "--ids", "1,2,3", "--max-new-tokens",
                                             "8", "--backend", "cpu", "--expert-dtype", "int8", "--data-dir",
                                             data.string()};
  const auto first = run_cli(generate);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const auto list = run_cli({"cache", "list", "--data-dir", data.string()});
  EXPECT_NE(list.out.find(model_dir() + ": experts-int8.safetensors "), std::string::npos) << list.out;
  const auto second = run_cli(generate);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, first.out);
  EXPECT_NE(run_cli({"info", "--model", model_dir(), "--expert-dtype", "int4"}).out.find("width 48, kept in int4"),
            std::string::npos);
  const auto wrong = run_cli({"generate", "--model", model_dir(), "--ids", "1", "--max-new-tokens", "1",
                              "--expert-dtype", "int2"});
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_NE(wrong.err.find("unknown expert format \"int2\" (choose bf16, int8 or int4)"), std::string::npos) << wrong.err;
}

// --expert-dtype auto loads what the memory planner chooses here (apply_plan): the fixture fits
// any machine's memory with its own values, so the same ids as the default bf16 run.
TEST(Cli, ExpertDtypeAutoLoadsThePlannersChoice) {
  const test::ScratchDir dir;
  std::vector<std::string> generate = {"generate", "--model", model_dir(), "--ids", "1,2,3", "--max-new-tokens", "8",
                                       "--backend", "cpu", "--data-dir", (dir.path() / "data").string()};
  const auto plain = run_cli(generate);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  generate.insert(generate.end(), {"--expert-dtype", "auto", "--stats"});
  const auto planned = run_cli(generate);
  ASSERT_EQ(planned.exit_code, 0) << planned.err;
  EXPECT_NE(planned.err.find("plan: float32 weights in host memory\n"), std::string::npos) << planned.err;
  EXPECT_EQ(planned.out, plain.out);
}

// The real model's fit for each expert format on 1, 2, 4 and 8 GPUs of 80 and 141 GiB, one table.
TEST(Cli, InfoTabulatesTheExpertFormatsFitOnGpuCounts) {
  const std::string real = (test::data_dir() / "real" / "MiniMax-Text-01").string();
  const auto r = run_cli({"info", "--model", real, "--gpus", "80GB,141GB", "--tokens", "131072", "--backend", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::size_t table = r.out.find("fit at 131072 tokens, tensor parallel");
  ASSERT_NE(table, std::string::npos) << r.out;
  const std::string rows = r.out.substr(table);
  EXPECT_NE(rows.find("1x80GiB         2x80GiB         4x80GiB         8x80GiB         1x141GiB"), std::string::npos)
      << rows;
  // bf16 fits only 8 x 141 GiB; int8 8 x 80 or 4 x 141; int4 4 x 80 or 2 x 141.
  EXPECT_NE(rows.find("  bf16    859 GiB no      431 GiB no      217 GiB no      110 GiB no      859 GiB no      "
                      "431 GiB no      217 GiB no      110 GiB fits"),
            std::string::npos)
      << rows;
  EXPECT_NE(rows.find("  int8    454 GiB no      229 GiB no      116 GiB no      59 GiB fits     454 GiB no      "
                      "229 GiB no      116 GiB fits    59 GiB fits"),
            std::string::npos)
      << rows;
  EXPECT_NE(rows.find("  int4    264 GiB no      133 GiB no      68 GiB fits     36 GiB fits     264 GiB no      "
                      "133 GiB fits    68 GiB fits     36 GiB fits"),
            std::string::npos)
      << rows;
}

TEST(Cli, CacheListsAndClearsEachModelsFiles) {
  const test::ScratchDir dir;
  const auto data = dir.path() / "data";
  const auto a = fingerprint_of(model_dir()), b = fingerprint_of(model_dir("tiny-a-hf"));
  ASSERT_EQ(a.size(), b.size());
  ASSERT_NE(a, b);
  for (const auto& [fingerprint, model, bytes] : {std::tuple{a, model_dir(), 3000}, std::tuple{b, model_dir("tiny-a-hf"), 1024}}) {
    std::filesystem::create_directories(data / "cache" / fingerprint / "quantized-weights");
    std::ofstream(data / "cache" / fingerprint / "quantized-weights" / "w.bin") << std::string(static_cast<std::size_t>(bytes), 'q');
    std::ofstream(data / "cache" / fingerprint / "model.txt") << model << "\n";
  }
  const auto list = run_cli({"cache", "list", "--data-dir", data.string()});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("cache: "), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(" in " + (data / "cache").string() + "\n"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(a + "  "), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(model_dir() + ": quantized-weights 2.93 KiB\n"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(model_dir("tiny-a-hf") + ": quantized-weights 1.00 KiB\n"), std::string::npos) << list.out;

  const auto info = run_cli({"info", "--data-dir", data.string()}).out;
  EXPECT_NE(info.find("cache: 4."), std::string::npos) << info;  // 4024 bytes and the two model.txt files
  const auto clear = run_cli({"cache", "clear", "--model", model_dir(), "--data-dir", data.string()});
  ASSERT_EQ(clear.exit_code, 0) << clear.err;
  EXPECT_EQ(clear.out.find("removed "), 0u) << clear.out;
  const auto after = run_cli({"cache", "list", "--data-dir", data.string()}).out;
  EXPECT_EQ(after.find(a), std::string::npos) << after;
  EXPECT_NE(after.find(b), std::string::npos) << after;
  ASSERT_EQ(run_cli({"cache", "clear", "--fingerprint", b, "--data-dir", data.string()}).exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(data / "cache" / b));

  // --all, a flag: last and in the middle.
  for (const bool last : {true, false}) {
    std::filesystem::create_directories(data / "cache" / a);
    std::ofstream(data / "cache" / a / "patterns.json") << "{}";
    const auto all = run_cli(last ? std::vector<std::string>{"cache", "clear", "--data-dir", data.string(), "--all"}
                                  : std::vector<std::string>{"cache", "clear", "--all", "--data-dir", data.string()});
    ASSERT_EQ(all.exit_code, 0) << all.err;
    EXPECT_EQ(all.out, "removed 2 B from " + (data / "cache").string() + "\n");
    EXPECT_EQ(run_cli({"cache", "list", "--data-dir", data.string()}).out,
              "cache: 0 B in " + (data / "cache").string() + "\n");
  }
}

}  // namespace
}  // namespace lightdesk
