// MiniMax conversation formats, written out natively (no template engine). They reproduce, for
// the conversations the tests collect, the published Jinja templates character for character:
//   M1:      MiniMax-AI/MiniMax-M1 tokenizer_config.json "chat_template";
//   Text-01: the MiniMax-VL-01 tokenizer_config.json template quoted by MiniMax's function-call
//            guide (Text-01 uses the same role strings).
#include <algorithm>
#include <nlohmann/json.hpp>

#include "lightdesk/input_files.h"
#include "lightdesk/text.h"
#include "prompt_encoding.h"

namespace lightdesk {
namespace {

using ordered_json = nlohmann::ordered_json;

// A tool definition as the templates' `tojson` writes it: Python's json.dumps(ensure_ascii=False)
// in the definition's own key order, ", " and ": " separators.
void write_python_json(const ordered_json& value, std::string& out) {
  if (value.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [key, item] : value.items()) {
      if (!first) out += ", ";
      first = false;
      out += ordered_json(key).dump();
      out += ": ";
      write_python_json(item, out);
    }
    out += '}';
  } else if (value.is_array()) {
    out += '[';
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (i) out += ", ";
      write_python_json(value[i], out);
    }
    out += ']';
  } else {
    out += value.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  }
}

std::string tool_json(const std::string& definition) {
  ordered_json parsed;
  try {
    parsed = ordered_json::parse(definition);
  } catch (const ordered_json::exception& e) {
    throw Error(std::string("tool definition is not valid JSON: ") + plain_error_text(e.what()));
  }
  std::string out;
  write_python_json(parsed, out);
  return out;
}

// First text part of a message (the M1 template reads content[0].text for these roles).
const std::string& first_text(const ChatMessage& message) {
  static const std::string empty;
  for (const ChatPart& part : message.parts)
    if (part.kind == ChatPart::Kind::Text) return part.text;
  return empty;
}

// tokenizer_config.json names a token either as a string or as {"content": ...}.
std::string token_field(const nlohmann::json& config, const char* field, const std::string& where) {
  if (!config.contains(field) || config[field].is_null())
    throw Error(where + ": \"" + field + "\" is missing; the chat format needs it");
  const auto& value = config[field];
  if (value.is_string()) return value.get<std::string>();
  if (!value.is_object() || !value.contains("content") || !value["content"].is_string())
    throw Error(where + ": \"" + field + "\" is neither a token string nor an object with a \"content\" string");
  return value["content"].get<std::string>();
}

nlohmann::json read_json(const std::filesystem::path& path) {
  const std::string text = read_json_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": not valid JSON: " + plain_error_text(e.what()));
  }
}

class PromptBuilder {
 public:
  void trusted(std::string_view text) { add(text, true); }
  void content(std::string_view text) { add(text, false); }
  ChatPrompt take() { return std::move(prompt_); }

 private:
  void add(std::string_view text, bool trusted) {
    if (text.empty()) return;
    if (!prompt_.pieces.empty() && prompt_.pieces.back().trusted == trusted)
      prompt_.pieces.back().text += text;
    else
      prompt_.pieces.push_back({std::string(text), trusted});
  }
  ChatPrompt prompt_;
};

constexpr std::string_view kM1ToolsIntro =
    "system tool_setting=tools\nYou are provided with these tools:\n<tools>\n";
// The template writes {''name'': ...}: adjacent Jinja string literals, so the quotes vanish.
constexpr std::string_view kM1ToolsOutro =
    "</tools>\n\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide "
    "tool-name and json-object of arguments, following the format below:\n<tool_calls>\n{name: <tool-name-1>, "
    "arguments: <args-json-object-1>}\n...\n</tool_calls>";

}  // namespace

std::string ChatPrompt::to_string() const {
  std::string out;
  for (const Piece& p : pieces) out += p.text;
  return out;
}

std::vector<TokenId> encode_prompt_text(std::span<const PromptTextView> pieces, const Tokenizer& tokenizer,
                                        int threads) {
  std::vector<std::string> specials = tokenizer.special_tokens();
  std::sort(specials.begin(), specials.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
  std::vector<TokenId> ids;
  std::vector<std::string_view> run;  // text since the last special token
  auto flush = [&] {
    const auto part = tokenizer.encode_joined(run, threads);
    ids.insert(ids.end(), part.begin(), part.end());
    run.clear();
  };
  for (const PromptTextView& piece : pieces) {
    if (!piece.trusted) {
      run.push_back(piece.text);
      continue;
    }
    std::size_t pos = 0;
    while (pos < piece.text.size()) {
      std::size_t best_at = piece.text.size();
      const std::string* best = nullptr;
      for (const std::string& s : specials) {  // longest first: ties keep the longer
        const std::size_t at = piece.text.find(s, pos);
        if (at < best_at) {
          best_at = at;
          best = &s;
        }
      }
      run.push_back(piece.text.substr(pos, best_at - pos));
      if (!best) break;
      flush();
      ids.push_back(*tokenizer.special_token_id(*best));
      pos = best_at + best->size();
    }
  }
  flush();
  return ids;
}

std::vector<TokenId> ChatPrompt::encode(const Tokenizer& tokenizer, int threads) const {
  std::vector<PromptTextView> views;
  for (const Piece& piece : pieces) views.push_back({piece.text, piece.trusted});
  return encode_prompt_text(views, tokenizer, threads);
}

ChatFormat::ChatFormat(ChatFamily family, const Tokenizer& tokenizer, std::string bos_token, std::string eos_token)
    : family_(family), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {
  std::vector<std::string> needed{bos_, eos_};
  if (family_ == ChatFamily::M1) needed.push_back("<begin_of_document>");
  for (const std::string& token : needed)
    if (!tokenizer.special_token_id(token))
      throw Error("the tokenizer has no special token \"" + token + "\", which the " +
                  (family_ == ChatFamily::M1 ? "MiniMax-M1" : "MiniMax-Text-01") + " chat format needs");
  end_of_turn_ = *tokenizer.special_token_id(eos_);
  image_token_ = tokenizer.special_token_id("<image>");
}

ChatFormat ChatFormat::for_model(const std::filesystem::path& model_directory, const Tokenizer& tokenizer) {
  const auto config_path = model_directory / "tokenizer_config.json";
  const nlohmann::json config = read_json(config_path);
  if (!config.is_object()) throw Error(config_path.string() + ": the top level is not an object");
  const std::string bos = token_field(config, "bos_token", config_path.string());
  const std::string eos = token_field(config, "eos_token", config_path.string());
  const bool has_template = config.contains("chat_template") && config["chat_template"].is_string();
  // config.json is needed to tell the family without a template, and names VL-01's image token.
  const auto model_config_path = model_directory / "config.json";
  const nlohmann::json model_config =
      has_template && !std::filesystem::exists(model_config_path) ? nlohmann::json::object() : read_json(model_config_path);
  ChatFamily family = ChatFamily::Text01;
  if (has_template) {
    // M1's template opens with the document token; Text-01's and VL-01's do not.
    if (config["chat_template"].get<std::string>().find("<begin_of_document>") != std::string::npos)
      family = ChatFamily::M1;
  } else if (model_config.is_object() &&
             parse_model_family(model_config.value("model_type", "")) == ModelFamily::MiniMaxM1) {
    family = ChatFamily::M1;
  }
  ChatFormat format(family, tokenizer, bos, eos);
  // Images line up with their features only if the tokenizer's placeholder is the config's.
  if (model_config.is_object() && model_config.contains("image_token_index")) {
    const auto& index = model_config["image_token_index"];
    if (!index.is_number_integer() || !format.image_token() || index.get<TokenId>() != *format.image_token())
      throw Error(model_config_path.string() + ": image_token_index " + index.dump() +
                  " is not the tokenizer's \"<image>\" " +
                  (format.image_token() ? "(id " + std::to_string(*format.image_token()) + ")" : "(it has none)"));
  }
  return format;
}

SamplingDefaults ChatFormat::sampling_defaults() const {
  if (family_ == ChatFamily::M1) return {1.0f, 0.95f};
  return {};
}

ChatPrompt ChatFormat::render(const Conversation& conversation) const { return render(conversation, false); }

ChatPrompt ChatFormat::render_continuation(const Conversation& conversation) const {
  return render(conversation, true);
}

ChatPrompt ChatFormat::render(const Conversation& conversation, bool continues) const {
  PromptBuilder out;
  using Role = ChatMessage::Role;
  auto open_turn = [&](std::string_view header) {
    out.trusted(bos_);
    out.trusted(header);
  };
  auto close_turn = [&] {
    out.trusted(eos_);
    out.trusted("\n");
  };
  if (continues) {
    if (!conversation.tools.empty()) throw Error("a continued conversation cannot add tool definitions");
    if (family_ == ChatFamily::M1)
      for (const ChatMessage& m : conversation.messages)
        if (m.role == Role::System) throw Error("a continued MiniMax-M1 conversation cannot add a system message");
    out.trusted("\n");  // what closes the assistant turn after its end-of-turn token
  }
  if (family_ == ChatFamily::M1) {
    std::string system;
    for (const ChatMessage& m : conversation.messages)
      if (m.role == Role::System) system += first_text(m);
    if (!continues) out.trusted("<begin_of_document>");
    if (!system.empty()) {
      open_turn("system ai_setting=assistant\n");
      out.content(system);
      close_turn();
    }
    if (!conversation.tools.empty()) {
      open_turn(kM1ToolsIntro);
      for (const std::string& tool : conversation.tools) {
        out.content(tool_json(tool));
        out.trusted("\n");
      }
      out.trusted(kM1ToolsOutro);
      close_turn();
    }
    for (const ChatMessage& m : conversation.messages) {
      switch (m.role) {
        case Role::System:
          break;
        case Role::User:
          for (const ChatPart& part : m.parts)
            if (part.kind == ChatPart::Kind::Image) throw Error("the MiniMax-M1 chat format has no images");
          open_turn("user name=user\n");
          out.content(first_text(m));
          close_turn();
          break;
        case Role::Assistant:
          open_turn("ai name=assistant\n");
          for (const ChatPart& part : m.parts)
            if (part.kind == ChatPart::Kind::Text) out.content(part.text);
          close_turn();
          break;
        case Role::Tool:
          open_turn("tool name=tools\n");
          for (const ChatPart& part : m.parts) {
            out.trusted("tool name: ");
            out.content(part.name);
            out.trusted("\ntool result: ");
            out.content(part.text);
            out.trusted("\n\n");
          }
          close_turn();
          break;
      }
    }
  } else {
    auto items = [&](const ChatMessage& m) {
      for (const ChatPart& part : m.parts) {
        if (part.kind == ChatPart::Kind::Image) {
          if (!image_token_) throw Error("the tokenizer has no \"<image>\" token, so images cannot be placed");
          out.trusted("<image>");
        }
        else
          out.content(part.text);
      }
    };
    for (const ChatMessage& m : conversation.messages) {
      switch (m.role) {
        case Role::System:
          open_turn("system ai_setting=assistant\n");
          break;
        case Role::Assistant:
          open_turn("ai name=assistant\n");
          break;
        case Role::User:
          open_turn("user name=user\n");
          break;
        case Role::Tool: {
          if (m.parts.empty()) throw Error("a function response message has no content");
          open_turn("system function_response=functions\n{\"name\": \"");
          out.content(m.parts.front().name);
          out.trusted("\", \"response\": ");
          out.content(m.parts.front().text);
          out.trusted("}");
          close_turn();
          continue;
        }
      }
      items(m);
      close_turn();
    }
    for (const std::string& tool : conversation.tools) {
      open_turn("system function_setting=functions\n");
      out.content(tool_json(tool));
      close_turn();
    }
  }
  if (conversation.add_generation_prompt) open_turn("ai name=assistant\n");
  return out.take();
}

}  // namespace lightdesk
