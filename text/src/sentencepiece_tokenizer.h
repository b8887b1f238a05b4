// SentencePiece (tokenizer.model) tokenizers.
#pragma once

#include <filesystem>
#include <memory>

#include "lightdesk/text.h"

namespace lightdesk {

std::unique_ptr<Tokenizer> open_sentencepiece_tokenizer(const std::filesystem::path& model_file);

}  // namespace lightdesk
