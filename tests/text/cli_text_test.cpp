// lightdesk-cli's text verbs (tokenize, detokenize, generate --prompt, ask) on the bundled model.
#include <gtest/gtest.h>

#include <array>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sys/wait.h>

#include "lightdesk/text.h"

namespace lightdesk {
namespace {

const std::string kModel = LIGHTDESK_SOURCE_DIR "/resources/models/tiny-a-m1-rd8";
const std::filesystem::path kDocs = std::filesystem::path(LIGHTDESK_TEST_DATA) / "documents";

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

// Runs the CLI with `arguments` (already shell-quoted), capturing both streams.
CliRun run_cli(const std::string& arguments) {
  const auto err_file = std::filesystem::temp_directory_path() / ("lightdesk_cli_text_" + std::to_string(::getpid()));
  const std::string command = std::string("'") + LIGHTDESK_CLI + "' " + arguments + " 2>'" + err_file.string() + "'";
  CliRun run;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return run;
  std::array<char, 4096> buffer;
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) run.out.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_file);
  run.err.assign(std::istreambuf_iterator<char>(err), {});
  std::filesystem::remove(err_file);
  return run;
}

std::string join(const std::vector<TokenId>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

TEST(CliText, TokenizePrintsTheFileIdsWithoutSpecialTokens) {
  const auto tokenizer = Tokenizer::open(kModel);
  const CliRun run = run_cli("tokenize --model '" + kModel + "' --file '" + (kDocs / "utf8.md").string() + "'");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto expected = tokenizer->encode(load_document(kDocs / "utf8.md").text);
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(run.out, join(expected) + "\n");
}

TEST(CliText, DetokenizeInvertsTokenize) {
  const auto tokenizer = Tokenizer::open(kModel);
  const std::string text = "Plain <end_of_sentence> text, café 東京\n";
  const CliRun run = run_cli("detokenize --model '" + kModel + "' --ids " + join(tokenizer->encode(text)));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, text + "\n");
}

TEST(CliText, GenerateFromPromptRepeatsAndMatchesTheIdVerb) {
  const auto tokenizer = Tokenizer::open(kModel);
  const std::string args = "generate --model '" + kModel + "' --max-new-tokens 12 ";
  const CliRun text = run_cli(args + "--prompt 'Once upon a time'");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_EQ(run_cli(args + "--prompt 'Once upon a time'").out, text.out);
  // The same continuation as ids, decoded (up to the end-of-turn token, which is not printed).
  const CliRun ids = run_cli(args + "--ids " + join(tokenizer->encode("Once upon a time")));
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  std::vector<TokenId> generated;
  for (std::size_t pos = 0; pos < ids.out.size();) {
    std::size_t end = ids.out.find_first_of(",\n", pos);
    generated.push_back(std::stoi(ids.out.substr(pos, end - pos)));
    pos = end + 1;
  }
  auto stop = std::find(generated.begin(), generated.end(), 2);
  generated.erase(stop, generated.end());
  EXPECT_EQ(text.out, tokenizer->decode(generated) + "\n");
}

TEST(CliText, AskAnswersAboutDocumentsWithProgress) {
  const CliRun run = run_cli("ask --model '" + kModel + "' --document '" + (kDocs / "two-pages.pdf").string() +
                          "' --document '" + (kDocs / "utf8.md").string() +
                          "' --question 'What is on page two?' --max-new-tokens 8 --greedy --chunk 32");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.err.find("tokens/s"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("s left"), std::string::npos) << run.err;
  EXPECT_FALSE(run.out.empty());
  EXPECT_EQ(run.out.back(), '\n');
}

// ask's flags that take no value, last and in the middle: the same answer, the statistics shown.
TEST(CliText, AskTakesItsFlagsLastOrInTheMiddle) {
  const std::string ask = "ask --model '" + kModel + "' ";
  const std::string rest = "--document '" + (kDocs / "utf8.md").string() + "' --question 'What is it?' --max-new-tokens 6";
  const CliRun middle = run_cli(ask + "--greedy --stats " + rest);
  ASSERT_EQ(middle.exit_code, 0) << middle.err;
  const CliRun last = run_cli(ask + rest + " --stats --greedy");
  ASSERT_EQ(last.exit_code, 0) << last.err;
  EXPECT_EQ(last.out, middle.out);
  for (const CliRun* run : {&middle, &last})
    EXPECT_NE(run->err.find("prompt tokens read in"), std::string::npos) << run->err;
  EXPECT_EQ(run_cli(ask + rest).out, middle.out);  // greedy is the default
}

// experts calibrate stores a pattern per task; list and show print them; ask --experts-kept
// retrieves the nearest pattern, reports the lost mass, and a stored pruned conversation keeps
// its experts while each turn is matched again.
TEST(CliText, ExpertPatternsCalibrateListShowAndPrune) {
  const auto data = std::filesystem::temp_directory_path() / ("lightdesk_cli_experts_" + std::to_string(::getpid()));
  std::filesystem::remove_all(data);
  const std::string where = " --data-dir '" + data.string() + "' --model '" + kModel + "' ";
  const std::string utf8 = "'" + (kDocs / "utf8.md").string() + "'";
  const CliRun calibrated =
      run_cli("experts calibrate" + where + "--task notes --file " + utf8 + " --question 'What is it?' --held-out " +
              utf8 + " --backend cpu");
  ASSERT_EQ(calibrated.exit_code, 0) << calibrated.err;
  EXPECT_NE(calibrated.out.find("pattern \"notes\" of "), std::string::npos) << calibrated.out;
  EXPECT_NE(calibrated.out.find("held-out router mass covered by the top 3 of tcess: "), std::string::npos)
      << calibrated.out;
  ASSERT_EQ(run_cli("experts calibrate" + where + "--task other --score tcess --confidence 0.6 --file " + utf8 +
                    " --backend cpu")
                .exit_code,
            0);
  const CliRun list = run_cli("experts list" + where);
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("  notes  mean-probability, "), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("  other  tcess (top 1, confidence 0.600000), "), std::string::npos) << list.out;
  const CliRun show = run_cli("experts show" + where + "--task notes");
  ASSERT_EQ(show.exit_code, 0) << show.err;
  EXPECT_EQ(std::count(show.out.begin(), show.out.end(), '\n'), 1 + 4) << show.out;  // header, 4 layers
  EXPECT_EQ(run_cli("experts show" + where + "--task missing").exit_code, 1);

  const std::string ask = "ask" + where + "--backend cpu --stats --max-new-tokens 4 --experts-kept 3 --session s ";
  const CliRun first = run_cli(ask + "--document " + utf8 + " --question 'What is it?'");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.err.find("experts: 3 experts per layer of pattern \""), std::string::npos) << first.err;
  EXPECT_NE(first.err.find("router probability mass lost this turn: "), std::string::npos) << first.err;
  const CliRun second = run_cli(ask + "--question 'And then?'");
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(second.err.find("experts: the session's 3 experts per layer"), std::string::npos) << second.err;
  EXPECT_EQ(second.err.find("recomputed"), std::string::npos) << second.err;
  // The same session under all experts: its state is refused by name and recomputed.
  const CliRun exact = run_cli("ask" + where + "--backend cpu --max-new-tokens 2 --session s --question 'Why?'");
  ASSERT_EQ(exact.exit_code, 0) << exact.err;
  EXPECT_NE(exact.err.find("was computed with 3 experts per layer of pattern"), std::string::npos) << exact.err;
  // Every expert's mass lost past a zero threshold: the warning.
  const CliRun warned = run_cli("ask" + where + "--backend cpu --max-new-tokens 2 --experts-kept 2 --experts-pattern "
                                "notes --lost-mass-warning 0 --document " + utf8 + " --question 'What?'");
  ASSERT_EQ(warned.exit_code, 0) << warned.err;
  EXPECT_NE(warned.err.find("leave out --experts-kept for the exact answer"), std::string::npos) << warned.err;
  std::filesystem::remove_all(data);
}

// ask --cached-experts: exact mode answers as every expert resident does, at the smallest cache;
// --stats names the seed and the misses; a stored session's state serves both modes.
TEST(CliText, ExactModeAnswersAsEveryExpertResident) {
  const auto data = std::filesystem::temp_directory_path() / ("lightdesk_cli_exact_" + std::to_string(::getpid()));
  std::filesystem::remove_all(data);
  const std::string where = " --data-dir '" + data.string() + "' --model '" + kModel + "' --backend cpu ";
  const std::string question = " --max-new-tokens 6 --document '" + (kDocs / "utf8.md").string() +
                               "' --question 'What is it?'";
  const CliRun resident = run_cli("ask" + where + question);
  ASSERT_EQ(resident.exit_code, 0) << resident.err;
  const CliRun cold = run_cli("ask" + where + "--cached-experts 2 --stats" + question);
  ASSERT_EQ(cold.exit_code, 0) << cold.err;
  EXPECT_EQ(cold.out, resident.out);
  EXPECT_NE(cold.err.find("2 per layer cached (no task pattern to seed them)"), std::string::npos) << cold.err;
  EXPECT_NE(cold.err.find("router probability mass on experts not cached (copied in) this turn: "), std::string::npos)
      << cold.err;
  ASSERT_EQ(run_cli("experts calibrate" + where + "--task notes --file '" + (kDocs / "utf8.md").string() + "'")
                .exit_code,
            0);
  const CliRun seeded = run_cli("ask" + where + "--cached-experts 3 --stats --session s" + question);
  ASSERT_EQ(seeded.exit_code, 0) << seeded.err;
  EXPECT_EQ(seeded.out, resident.out);
  EXPECT_NE(seeded.err.find("3 per layer cached, seeded from pattern \"notes\""), std::string::npos) << seeded.err;
  // The state exact mode saved goes on with every expert resident, not recomputed.
  const CliRun next = run_cli("ask" + where + "--session s --max-new-tokens 2 --question 'And then?'");
  ASSERT_EQ(next.exit_code, 0) << next.err;
  EXPECT_EQ(next.err.find("recomputed"), std::string::npos) << next.err;
  EXPECT_EQ(run_cli("ask" + where + "--cached-experts 1" + question).exit_code, 1);  // below the top-k
  EXPECT_EQ(run_cli("ask" + where + "--cached-experts 2 --experts-kept 3" + question).exit_code, 2);
  std::filesystem::remove_all(data);
}

TEST(CliText, AskRefusesUnreadableDocumentsByName) {
  const CliRun run = run_cli("ask --model '" + kModel + "' --document '" + (kDocs / "encrypted.pdf").string() +
                          "' --question 'Why?'");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.err.find("encrypted.pdf"), std::string::npos) << run.err;
  EXPECT_EQ(run_cli("ask --model '" + kModel + "' --question 'Why?'").exit_code, 2);
}

}  // namespace
}  // namespace lightdesk
