// Prompt text to ids with special tokens matched only in trusted text, for prompts whose text
// lies in several places (a rendered template and the documents it quotes).
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "lightdesk/text.h"

namespace lightdesk {

struct PromptTextView {
  std::string_view text;
  bool trusted = false;
};

// What ChatPrompt::encode does for its pieces: the text between special tokens is encoded as one
// run (Tokenizer::encode_joined, so the views are not joined where the tokenizer need not).
std::vector<TokenId> encode_prompt_text(std::span<const PromptTextView> pieces, const Tokenizer& tokenizer,
                                        int threads);

}  // namespace lightdesk
