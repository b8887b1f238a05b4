// A chat answered by an OpenAI-compatible server (lightdesk-server, vLLM, SGLang, ...) instead of
// a local model: the messages go as text, the answer streams back as server-sent events.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace lightdesk::remote {

struct RemoteOptions {
  std::string endpoint;  // http(s)://host[:port][/v1]
  std::string api_key;   // empty: none sent
  std::string model;     // empty: the first of the server's /v1/models
};

struct RemoteMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

struct RemoteRequest {
  std::vector<RemoteMessage> messages;
  std::int64_t max_tokens = 512;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  std::optional<std::uint64_t> seed;
};

struct RemoteAnswer {
  std::string content, reasoning;
  std::string finish_reason;
  bool stopped = false;  // on_delta asked to stop
  std::int64_t prompt_tokens = 0, completion_tokens = 0;  // the server's usage, where it reports it
};

// The model `options` names, else the first the server lists. Throws lightdesk::Error naming the
// endpoint and the cause (unreachable, refused key, the server's error message, no model).
std::string remote_model(const RemoteOptions& options);

// Streams the answer, passing each piece of reasoning and of content to `on_delta`, which returns
// false to stop (the connection is closed, the server stops generating). Throws as remote_model.
RemoteAnswer ask_remote(const RemoteOptions& options, const RemoteRequest& request,
                        const std::function<bool(const std::string& reasoning, const std::string& content)>& on_delta);

}  // namespace lightdesk::remote
