// A chat answered by an OpenAI-compatible server (lightdesk-server, vLLM, SGLang, ...) instead of
// a local model: the messages go as text, the answer streams back as server-sent events.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace lightdesk::remote {

struct RemoteOptions {
  std::string endpoint;  // http(s)://host[:port][/v1]
  std::string api_key;   // empty: none sent
  std::string model;     // empty: the first of the server's /v1/models
};

struct RemoteRequest {
  std::string user_text;  // one user message
  std::int64_t max_tokens = 512;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  std::optional<std::uint64_t> seed;
};

struct RemoteAnswer {
  std::string content, reasoning;
  std::string finish_reason;
};

// Streams the answer, passing each piece of content to `on_content`. Throws lightdesk::Error
// naming the endpoint and the cause (unreachable, refused key, the server's error message).
RemoteAnswer ask_remote(const RemoteOptions& options, const RemoteRequest& request,
                        const std::function<void(const std::string&)>& on_content);

}  // namespace lightdesk::remote
