// Hugging Face tokenizer.json byte-level BPE, as MiniMax (and GPT-2, GPT-4 style models) ship it.
#pragma once

#include <filesystem>
#include <memory>

#include "lightdesk/text.h"

namespace lightdesk {

std::unique_ptr<Tokenizer> open_bpe_tokenizer(const std::filesystem::path& tokenizer_json);

}  // namespace lightdesk
