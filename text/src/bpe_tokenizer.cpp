// Byte-level BPE from a Hugging Face tokenizer.json, reproducing the `tokenizers` library:
//   1. added tokens are split off first (special ones only when the caller allows them);
//   2. the normalizer (Unicode normal forms through ICU) runs on the remaining text;
//   3. the pre-tokenizer splits it with its regexes (PCRE2, Unicode properties), the Split
//      "Isolated" way: every match and every gap between matches is a piece;
//   4. each piece's bytes start as the 256 byte tokens (GPT-2's byte-to-unicode alphabet) and
//      are merged pair by pair, lowest merge rank first, leftmost first among equal ranks.
// Large texts are cut into chunks scanned by the regex in parallel; where a chunk's scan and
// its predecessor's disagree on where pieces fall, the predecessor's scan is continued until
// they meet again, so the pieces are always those of one sequential scan.
#include "bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "lightdesk/input_files.h"
#include "lightdesk/thread_pool.h"
#include "utf8.h"

namespace lightdesk {
namespace {

using json = nlohmann::json;

// GPT-2's pattern, which the ByteLevel pre-tokenizer applies when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Texts at least this long are encoded in parallel chunks of about this size.
constexpr std::size_t kParallelChunkBytes = 256 * 1024;
// Pieces longer than this are not worth caching (rare, and they would bloat the cache).
constexpr std::size_t kCachedPieceBytes = 64;

// GPT-2's reversible byte-to-unicode map: printable bytes stand for themselves, the others are
// shifted to U+0100 and up, in byte order.
std::array<char32_t, 256> byte_to_unicode() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

// The bytes a vocabulary string stands for, or nullopt when it has a character outside the
// byte alphabet (the decoder then keeps the string's own UTF-8, as `tokenizers` does).
std::optional<std::string> unicode_to_bytes(const std::string& token,
                                            const std::unordered_map<char32_t, unsigned char>& byte_of) {
  std::string bytes;
  std::size_t pos = 0;
  while (pos < token.size()) {
    const int n = utf8::sequence_length(token, pos);
    if (n <= 0) return std::nullopt;
    char32_t cp = static_cast<unsigned char>(token[pos]);
    if (n > 1) {
      cp &= (0x7Fu >> n);
      for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(token[pos + k]) & 0x3F);
    }
    auto it = byte_of.find(cp);
    if (it == byte_of.end()) return std::nullopt;
    bytes += static_cast<char>(it->second);
    pos += static_cast<std::size_t>(n);
  }
  return bytes;
}

bool is_valid_utf8(std::string_view text) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const int n = utf8::sequence_length(text, pos);
    if (n <= 0) return false;
    pos += static_cast<std::size_t>(n);
  }
  return true;
}

// A compiled pre-tokenizer regex. Matching is thread-safe: each call brings its own match data.
class Pattern {
 public:
  Pattern(const std::string& source, const std::string& where) : where_(where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), PCRE2_UTF | PCRE2_UCP,
                          &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw Error(where + ": pre-tokenizer regex does not compile at offset " + std::to_string(offset) + ": " +
                  reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
  }
  ~Pattern() { pcre2_code_free(code_); }
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  // The next match in subject at or after `from`, as [begin, end); nullopt when there is none.
  // The whole subject is passed so that look-behind and look-ahead see the true neighbours.
  struct Match {
    std::size_t begin, end;
  };
  class Matcher {
   public:
    explicit Matcher(const Pattern& pattern)
        : pattern_(pattern), data_(pcre2_match_data_create_from_pattern(pattern.code_, nullptr)) {}
    ~Matcher() { pcre2_match_data_free(data_); }
    Matcher(const Matcher&) = delete;
    Matcher& operator=(const Matcher&) = delete;

    std::optional<Match> next(std::string_view subject, std::size_t from) {
      // Empty matches are skipped (as the `tokenizers` split does) by searching one character on.
      while (from <= subject.size()) {
        const int rc = pcre2_match(pattern_.code_, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), from,
                                   PCRE2_NO_UTF_CHECK, data_, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) return std::nullopt;
        if (rc < 0) {
          // A regex that backtracks past PCRE2's match or depth limit on this text.
          PCRE2_UCHAR message[256];
          pcre2_get_error_message(rc, message, sizeof message);
          throw Error(pattern_.where_ + ": the pre-tokenizer regex cannot split this text (" +
                      reinterpret_cast<const char*>(message) + ")");
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data_);
        if (ov[1] > ov[0]) return Match{ov[0], ov[1]};
        if (ov[0] >= subject.size()) return std::nullopt;
        const int n = utf8::sequence_length(subject, ov[0]);
        from = ov[0] + static_cast<std::size_t>(n > 0 ? n : 1);
      }
      return std::nullopt;
    }

   private:
    const Pattern& pattern_;
    pcre2_match_data* data_;
  };

 private:
  std::string where_;
  pcre2_code* code_ = nullptr;
};

// One regex scan of subject from `start`: the piece boundaries it makes (match starts and ends)
// and the positions it searches from (start and every match end). Two scans that search from
// the same position agree from there on.
struct Scan {
  std::vector<std::size_t> cuts;
  std::vector<std::size_t> search_positions;
  std::size_t last_search = 0;  // where the scan stopped
};

// Scans from `start` until the search position reaches `stop` or the next match begins at or
// after it (that match is left to whoever scans from `stop`).
void scan_until(Pattern::Matcher& matcher, std::string_view subject, std::size_t start, std::size_t stop,
                Scan& scan) {
  std::size_t pos = start;
  while (pos < stop) {
    const auto m = matcher.next(subject, pos);
    if (!m || m->begin >= stop) break;
    scan.cuts.push_back(m->begin);
    scan.cuts.push_back(m->end);
    pos = m->end;
    scan.search_positions.push_back(pos);
  }
  scan.last_search = pos;
}

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::filesystem::path& file) : where_(file.string()) {
    json root;
    try {
      root = json::parse(read_json_file(file));
    } catch (const json::exception& e) {
      throw Error(where_ + ": not valid JSON: " + plain_error_text(e.what()));
    }
    // Fields of the wrong type or missing end up here as the library's exceptions.
    try {
      if (!root.is_object()) throw Error(where_ + ": not a tokenizer (the top level is not an object)");
      read_model(root.at("model"));
      read_added_tokens(root);
      read_normalizer(root.value("normalizer", json()), 0);
      read_pre_tokenizer(root.value("pre_tokenizer", json()), 0);
      const json decoder = root.value("decoder", json());
      if (!decoder.is_null() && decoder.value("type", "") != "ByteLevel")
        throw Error(where_ + ": decoder type \"" + decoder.value("type", "") + "\" is not supported (ByteLevel only)");
    } catch (const json::exception& e) {
      throw Error(where_ + ": malformed tokenizer: " + plain_error_text(e.what()));
    }
  }

  std::vector<TokenId> encode(std::string_view text, int threads) const override {
    return encode_impl(text, false, threads);
  }
  std::vector<TokenId> encode_with_special(std::string_view text) const override {
    return encode_impl(text, true, 1);
  }

  std::string token_bytes(TokenId id) const override {
    if (id < 0 || id >= vocab_size()) throw Error("token id " + std::to_string(id) + " is outside the vocabulary (" +
                                                  std::to_string(vocab_size()) + " ids)");
    return id_bytes_[static_cast<std::size_t>(id)];
  }
  std::optional<TokenId> special_token_id(std::string_view content) const override {
    for (const auto& t : added_)
      if (t.content == content) return t.id;
    return std::nullopt;
  }
  bool is_special(TokenId id) const override {
    return std::any_of(added_.begin(), added_.end(), [&](const AddedToken& t) { return t.id == id && t.special; });
  }
  std::vector<std::string> special_tokens() const override {
    std::vector<std::string> contents;
    for (const auto& t : added_)
      if (t.special) contents.push_back(t.content);
    return contents;
  }
  int vocab_size() const override { return static_cast<int>(id_bytes_.size()); }

 private:
  struct MergeResult {
    int rank;
    TokenId id;
  };
  static std::uint64_t pair_key(TokenId a, TokenId b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  using Cache = std::unordered_map<std::string, std::vector<TokenId>>;

  void read_model(const json& model) {
    if (model.value("type", "BPE") != "BPE")
      throw Error(where_ + ": model type \"" + model.value("type", "") + "\" is not supported (BPE only)");
    for (const char* unsupported : {"continuing_subword_prefix", "end_of_word_suffix", "dropout"})
      if (model.contains(unsupported) && !model[unsupported].is_null())
        throw Error(where_ + ": model." + unsupported + " is set; byte-level BPE without it is supported");
    if (model.value("byte_fallback", false)) throw Error(where_ + ": model.byte_fallback is not supported");
    ignore_merges_ = model.value("ignore_merges", false);

    const auto alphabet = byte_to_unicode();
    std::unordered_map<char32_t, unsigned char> byte_of;
    for (int b = 0; b < 256; ++b) byte_of[alphabet[static_cast<std::size_t>(b)]] = static_cast<unsigned char>(b);

    std::unordered_map<std::string, TokenId> vocab;
    const json& entries = model.at("vocab");
    if (!entries.is_object()) throw Error(where_ + ": model.vocab is not an object");
    // Ids are dense from 0 in every tokenizer.json: one past the entry count (plus the added
    // tokens, read later) bounds them, and with them the id table's size.
    id_limit_ = static_cast<std::int64_t>(entries.size()) + 256;
    for (const auto& [token, id_json] : entries.items()) {
      const TokenId id = checked_id(id_json, "vocab id of \"" + token + "\"");
      vocab.emplace(token, id);
      if (static_cast<std::size_t>(id) >= id_bytes_.size()) id_bytes_.resize(static_cast<std::size_t>(id) + 1);
      id_bytes_[static_cast<std::size_t>(id)] = unicode_to_bytes(token, byte_of).value_or(token);
      if (ignore_merges_) whole_token_.emplace(id_bytes_[static_cast<std::size_t>(id)], id);
    }
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      utf8::append(ch, alphabet[static_cast<std::size_t>(b)]);
      auto it = vocab.find(ch);
      if (it == vocab.end())
        throw Error(where_ + ": vocab lacks the byte token \"" + ch + "\" (byte " + std::to_string(b) +
                    "); not a byte-level BPE");
      byte_ids_[static_cast<std::size_t>(b)] = it->second;
    }
    const json& merges = model.at("merges");
    merges_.reserve(merges.size());
    int rank = 0;
    for (const json& merge : merges) {
      std::string left, right;
      if (merge.is_string()) {  // "left right" (tokenizers < 0.20)
        const std::string s = merge.get<std::string>();
        const auto space = s.find(' ');
        if (space == std::string::npos) throw Error(where_ + ": merge \"" + s + "\" has no space");
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else {  // ["left", "right"]
        left = merge.at(0).get<std::string>();
        right = merge.at(1).get<std::string>();
      }
      const auto l = vocab.find(left), r = vocab.find(right), m = vocab.find(left + right);
      if (l == vocab.end() || r == vocab.end() || m == vocab.end())
        throw Error(where_ + ": merge " + std::to_string(rank) + " (\"" + left + "\" \"" + right +
                    "\") names a token missing from the vocab");
      merges_.emplace(pair_key(l->second, r->second), MergeResult{rank, m->second});
      ++rank;
    }
  }

  void read_added_tokens(const json& root) {
    const json added = root.value("added_tokens", json::array());
    if (!added.is_array()) throw Error(where_ + ": added_tokens is not a list");
    id_limit_ += static_cast<std::int64_t>(added.size());
    for (const json& t : added) {
      const std::string content = t.at("content").get<std::string>();
      AddedToken token{checked_id(t.at("id"), "added token \"" + content + "\" has id"), content,
                       t.value("special", false)};
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        if (t.value(flag, false))
          throw Error(where_ + ": added token \"" + token.content + "\" sets " + flag + ", which is not supported");
      if (token.content.empty()) throw Error(where_ + ": added token " + std::to_string(token.id) + " is empty");
      if (static_cast<std::size_t>(token.id) >= id_bytes_.size()) id_bytes_.resize(static_cast<std::size_t>(token.id) + 1);
      id_bytes_[static_cast<std::size_t>(token.id)] = token.content;
      added_.push_back(std::move(token));
    }
    // Longest first: at one position the longest added token wins, as in `tokenizers`.
    std::sort(added_.begin(), added_.end(),
              [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  }

  // A TokenId from a JSON id, checked before narrowing: within [0, id_limit_).
  TokenId checked_id(const json& id, const std::string& what) const {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() >= id_limit_)
      throw Error(where_ + ": " + what + " " + id.dump() + ", outside 0.." + std::to_string(id_limit_ - 1) +
                  " (ids run from 0 up to about the number of tokens)");
    return id.get<TokenId>();
  }

  // Sequences nest in the JSON only as deep as someone wrote them; a few levels is all that
  // `tokenizers` ever writes, and the recursion below must not run out of stack.
  static constexpr int kMaxSequenceDepth = 16;
  void check_depth(int depth, const char* what) const {
    if (depth > kMaxSequenceDepth)
      throw Error(where_ + ": " + what + " Sequences nest more than " + std::to_string(kMaxSequenceDepth) +
                  " deep");
  }

  void read_normalizer(const json& normalizer, int depth) {
    if (normalizer.is_null()) return;
    check_depth(depth, "normalizer");
    const std::string type = normalizer.value("type", "");
    if (type == "Sequence") {
      for (const json& step : normalizer.at("normalizers")) read_normalizer(step, depth + 1);
      return;
    }
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* form = nullptr;
    if (type == "NFC") form = icu::Normalizer2::getNFCInstance(status);
    else if (type == "NFD") form = icu::Normalizer2::getNFDInstance(status);
    else if (type == "NFKC") form = icu::Normalizer2::getNFKCInstance(status);
    else if (type == "NFKD") form = icu::Normalizer2::getNFKDInstance(status);
    else throw Error(where_ + ": normalizer type \"" + type + "\" is not supported (NFC, NFD, NFKC, NFKD)");
    if (U_FAILURE(status)) throw Error(std::string("ICU normalizer ") + type + " unavailable: " + u_errorName(status));
    normalizers_.push_back(form);
  }

  void read_pre_tokenizer(const json& pre, int depth) {
    if (pre.is_null()) return;
    check_depth(depth, "pre-tokenizer");
    const std::string type = pre.value("type", "");
    if (type == "Sequence") {
      for (const json& step : pre.at("pretokenizers")) read_pre_tokenizer(step, depth + 1);
    } else if (type == "Split") {
      const json& pattern = pre.at("pattern");
      if (!pattern.contains("Regex"))
        throw Error(where_ + ": Split pre-tokenizer with a String pattern is not supported (Regex only)");
      if (pre.value("behavior", "") != "Isolated" || pre.value("invert", false))
        throw Error(where_ + ": Split pre-tokenizer behavior \"" + pre.value("behavior", "") +
                    "\" is not supported (Isolated, not inverted)");
      patterns_.push_back(std::make_unique<Pattern>(pattern["Regex"].get<std::string>(), where_));
    } else if (type == "ByteLevel") {
      if (pre.value("add_prefix_space", false))
        throw Error(where_ + ": ByteLevel add_prefix_space is not supported");
      if (pre.value("use_regex", true)) patterns_.push_back(std::make_unique<Pattern>(kGpt2Pattern, where_));
    } else {
      throw Error(where_ + ": pre-tokenizer type \"" + type + "\" is not supported (Split, ByteLevel, Sequence)");
    }
  }

  std::vector<TokenId> encode_impl(std::string_view raw, bool allow_special, int threads) const {
    std::string sanitized;
    if (!is_valid_utf8(raw)) {
      sanitized = sanitize_utf8(raw);
      raw = sanitized;
    }
    std::vector<TokenId> ids;
    std::size_t pos = 0;
    while (pos < raw.size()) {
      const auto [at, token] = next_added_token(raw, pos, allow_special);
      encode_text(raw.substr(pos, at - pos), threads, ids);
      if (!token) break;
      ids.push_back(token->id);
      pos = at + token->content.size();
    }
    return ids;
  }

  // The first added token at or after pos that may be matched (longest at that position).
  std::pair<std::size_t, const AddedToken*> next_added_token(std::string_view text, std::size_t pos,
                                                              bool allow_special) const {
    std::size_t best_at = text.size();
    const AddedToken* best = nullptr;
    for (const AddedToken& t : added_) {
      if (t.special && !allow_special) continue;
      const std::size_t at = text.find(t.content, pos);
      if (at < best_at) {  // added_ is longest first, so ties keep the longer token
        best_at = at;
        best = &t;
      }
    }
    return {best_at, best};
  }

  void encode_text(std::string_view text, int threads, std::vector<TokenId>& ids) const {
    if (text.empty()) return;
    std::string normalized;
    if (!normalizers_.empty()) {
      icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
      for (const icu::Normalizer2* form : normalizers_) {
        UErrorCode status = U_ZERO_ERROR;
        u = form->normalize(u, status);
        if (U_FAILURE(status)) throw Error(std::string("Unicode normalisation failed: ") + u_errorName(status));
      }
      u.toUTF8String(normalized);
      text = normalized;
    }
    const bool parallel = threads != 1 && text.size() >= 2 * kParallelChunkBytes;
    std::optional<ThreadPool> pool;
    if (parallel) pool.emplace(threads);
    const std::size_t workers = pool ? static_cast<std::size_t>(pool->size()) : 1;
    auto for_each = [&](std::size_t count, const std::function<void(std::int64_t)>& fn) {
      if (count == 1 || !pool)
        for (std::size_t i = 0; i < count; ++i) fn(static_cast<std::int64_t>(i));
      else
        pool->parallel_for(static_cast<std::int64_t>(count), fn);
    };
    if (patterns_.empty()) {
      Cache cache;
      encode_piece(text, 1, cache, ids);
      return;
    }
    // The text goes in blocks of a few chunks per worker, so that the piece boundaries held at
    // once stay bounded whatever the text's size (a block is one chunk when not parallel). Each
    // worker keeps its cache across blocks.
    std::vector<Cache> caches(workers);
    const std::size_t block_bytes = workers * 4 * kParallelChunkBytes;
    Pattern::Matcher matcher(*patterns_.front());
    std::size_t position = 0;  // where the scan of the whole text searches next
    while (position < text.size()) {
      const std::size_t block_end = std::min(text.size(), position + block_bytes);
      std::vector<std::size_t> cuts =
          first_stage_cuts(text, position, block_end, parallel ? kParallelChunkBytes : block_bytes, matcher, for_each);
      if (cuts.back() == position) {
        // No match begins before block_end: the gap runs on to the next match (or the end).
        const auto m = matcher.next(text, position);
        cuts.push_back(m ? m->begin : text.size());
        if (m) cuts.push_back(m->end);
        cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
      }
      // Pieces between consecutive cuts, in one range per worker.
      const std::size_t pieces = cuts.size() - 1;
      std::vector<std::vector<TokenId>> out(workers);
      for_each(workers, [&](std::int64_t r) {
        const auto w = static_cast<std::size_t>(r);
        for (std::size_t p = pieces * w / workers; p < pieces * (w + 1) / workers; ++p)
          encode_piece(text.substr(cuts[p], cuts[p + 1] - cuts[p]), 1, caches[w], out[w]);
      });
      for (const auto& part : out) ids.insert(ids.end(), part.begin(), part.end());
      position = cuts.back();
    }
  }

  // Boundaries of the first pre-tokenizer's pieces from `from` (a position the scan of the whole
  // text searches from) to where that scan next searches from at or after `to`, or stops before
  // a match that begins there: from, ..., end. Chunks of about chunk_bytes are scanned in
  // parallel.
  template <class ForEach>
  std::vector<std::size_t> first_stage_cuts(std::string_view text, std::size_t from, std::size_t to,
                                            std::size_t chunk_bytes, Pattern::Matcher& matcher,
                                            const ForEach& for_each) const {
    // Chunk starts: just after a line break near every chunk_bytes, where the scans almost
    // always agree at once.
    std::vector<std::size_t> starts{from};
    for (std::size_t target = from + chunk_bytes; target < to; target += chunk_bytes) {
      const std::size_t nl = text.find('\n', std::max(target, starts.back() + 1));
      if (nl == std::string_view::npos || nl + 1 >= to) break;
      starts.push_back(nl + 1);
      target = nl + 1;
    }
    std::vector<Scan> scans(starts.size());
    for_each(starts.size(), [&](std::int64_t k) {
      Pattern::Matcher chunk_matcher(*patterns_.front());
      const std::size_t i = static_cast<std::size_t>(k);
      scans[i].search_positions.push_back(starts[i]);
      scan_until(chunk_matcher, text, starts[i], i + 1 < starts.size() ? starts[i + 1] : to, scans[i]);
    });
    // Join: a chunk's cuts count from the first of its search positions that the joined scan
    // reaches; until then the joined scan is continued sequentially.
    std::vector<std::size_t> cuts{from};
    std::size_t position = from;  // where the joined scan searches next; cuts before it are final
    for (std::size_t k = 0; k < scans.size(); ++k) {
      const Scan& scan = scans[k];
      // The joined scan stopped before this chunk because no match begins before its start:
      // searching from the start finds the same next match.
      position = std::max(position, starts[k]);
      auto reached = [&] {
        return std::binary_search(scan.search_positions.begin(), scan.search_positions.end(), position);
      };
      while (position < scan.last_search && !reached()) {
        const auto m = matcher.next(text, position);
        if (!m) {
          position = text.size();
          break;
        }
        cuts.push_back(m->begin);
        cuts.push_back(m->end);
        position = m->end;
      }
      if (reached()) {
        for (std::size_t c : scan.cuts)
          if (c >= position) cuts.push_back(c);
        position = scan.last_search;
      }
    }
    // The cuts come in order; a match ending where the next begins gives a cut twice. The last
    // cut is the last match's end, where the next block's scan searches from.
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    return cuts;
  }

  // A first-stage piece: the later pre-tokenizer stages split it further, then BPE.
  void encode_piece(std::string_view piece, std::size_t stage, Cache& cache, std::vector<TokenId>& ids) const {
    if (stage < patterns_.size()) {
      Pattern::Matcher matcher(*patterns_[stage]);
      std::size_t pos = 0;
      while (pos < piece.size()) {
        const auto m = matcher.next(piece, pos);
        const std::size_t begin = m ? m->begin : piece.size();
        if (begin > pos) encode_piece(piece.substr(pos, begin - pos), stage + 1, cache, ids);
        if (!m) break;
        encode_piece(piece.substr(m->begin, m->end - m->begin), stage + 1, cache, ids);
        pos = m->end;
      }
      return;
    }
    const bool cacheable = piece.size() <= kCachedPieceBytes;
    if (cacheable) {
      auto it = cache.find(std::string(piece));
      if (it != cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t first = ids.size();
    bpe(piece, ids);
    if (cacheable) cache.emplace(std::string(piece), std::vector<TokenId>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
  }

  // Merges a piece's byte tokens, lowest rank first (leftmost among equals), as `tokenizers`'
  // Word::merge_all does.
  void bpe(std::string_view piece, std::vector<TokenId>& ids) const {
    if (ignore_merges_) {
      auto it = whole_token_.find(std::string(piece));
      if (it != whole_token_.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    struct Symbol {
      TokenId id;
      int prev, next;
      bool alive;
    };
    const int n = static_cast<int>(piece.size());
    std::vector<Symbol> symbols(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
      symbols[static_cast<std::size_t>(i)] = {byte_ids_[static_cast<unsigned char>(piece[static_cast<std::size_t>(i)])],
                                              i - 1, i + 1 < n ? i + 1 : -1, true};
    struct Candidate {
      int rank, pos;
      TokenId id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    auto consider = [&](int left) {
      const Symbol& a = symbols[static_cast<std::size_t>(left)];
      if (a.next < 0) return;
      auto it = merges_.find(pair_key(a.id, symbols[static_cast<std::size_t>(a.next)].id));
      if (it != merges_.end()) queue.push({it->second.rank, left, it->second.id});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[static_cast<std::size_t>(top.pos)];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[static_cast<std::size_t>(left.next)];
      auto it = merges_.find(pair_key(left.id, right.id));
      if (it == merges_.end() || it->second.id != top.id) continue;  // stale: a neighbour changed
      left.id = top.id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
    for (int i = 0; i >= 0 && i < n; i = symbols[static_cast<std::size_t>(i)].next) ids.push_back(symbols[static_cast<std::size_t>(i)].id);
  }

  std::string where_;
  std::int64_t id_limit_ = 0;
  std::vector<std::string> id_bytes_;
  std::array<TokenId, 256> byte_ids_{};
  std::unordered_map<std::uint64_t, MergeResult> merges_;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, TokenId> whole_token_;  // ignore_merges: whole pieces in the vocab
  std::vector<AddedToken> added_;
  std::vector<const icu::Normalizer2*> normalizers_;  // ICU singletons, not owned
  std::vector<std::unique_ptr<Pattern>> patterns_;
};

}  // namespace

std::unique_ptr<Tokenizer> open_bpe_tokenizer(const std::filesystem::path& tokenizer_json) {
  return std::make_unique<BpeTokenizer>(tokenizer_json);
}

}  // namespace lightdesk
