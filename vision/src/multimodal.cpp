// Placeholder expansion (model notes §6.6): the processor repeats "<image>" once per image row
// and the model scatters the image rows into those positions in order.
#include "lightdesk/vision.h"

namespace lightdesk::vision {

MultimodalInput expand_image_placeholders(std::span<const TokenId> tokens, TokenId image_token,
                                          std::span<const std::vector<float>> images, int hidden_size) {
  if (hidden_size <= 0) throw Error("expand_image_placeholders: hidden size must be positive");
  MultimodalInput input;
  std::size_t next_image = 0;
  for (const TokenId token : tokens) {
    if (token != image_token) {
      input.tokens.push_back(token);
      input.embedding_overrides.push_back(nullptr);
      continue;
    }
    if (next_image == images.size())
      throw Error("the prompt has more image placeholders than the " + std::to_string(images.size()) +
                  " images given");
    const std::vector<float>& rows = images[next_image++];
    if (rows.empty() || rows.size() % static_cast<std::size_t>(hidden_size) != 0)
      throw Error("image " + std::to_string(next_image) + ": " + std::to_string(rows.size()) +
                  " values are not rows of hidden size " + std::to_string(hidden_size));
    for (std::size_t r = 0; r < rows.size(); r += static_cast<std::size_t>(hidden_size)) {
      input.tokens.push_back(image_token);
      input.embedding_overrides.push_back(rows.data() + r);
    }
  }
  if (next_image != images.size())
    throw Error("the prompt has " + std::to_string(next_image) + " image placeholders for " +
                std::to_string(images.size()) + " images");
  return input;
}

}  // namespace lightdesk::vision
