#include "remote_chat.h"

#include "lightdesk/engine.h"

#ifdef LIGHTDESK_WITHOUT_HTTP
namespace lightdesk::remote {
RemoteAnswer ask_remote(const RemoteOptions&, const RemoteRequest&, const std::function<void(const std::string&)>&) {
  throw Error("this lightdesk-cli was built without cpp-httplib, so --endpoint is not available");
}
}  // namespace lightdesk::remote
#else
#include <httplib.h>

#include <nlohmann/json.hpp>

namespace lightdesk::remote {
namespace {

using json = nlohmann::json;

struct Endpoint {
  std::string origin;  // scheme://host:port
  std::string path;    // the API's root, ending in /v1
};

Endpoint parse_endpoint(const std::string& url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string::npos || (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0))
    throw Error("--endpoint must be an http:// or https:// URL, got \"" + url + "\"");
  const auto path_start = url.find('/', scheme_end + 3);
  Endpoint e{url.substr(0, path_start), path_start == std::string::npos ? "" : url.substr(path_start)};
  while (!e.path.empty() && e.path.back() == '/') e.path.pop_back();
  if (e.path.size() < 3 || e.path.compare(e.path.size() - 3, 3, "/v1") != 0) e.path += "/v1";
  return e;
}

// The server's message in an error body, else the body itself.
std::string error_message(const std::string& body) {
  try {
    const json parsed = json::parse(body);
    if (parsed.contains("error")) {
      const json& error = parsed["error"];
      return error.is_object() && error.contains("message") ? error["message"].get<std::string>() : error.dump();
    }
  } catch (const json::exception&) {
  }
  return body.substr(0, 300);
}

}  // namespace

RemoteAnswer ask_remote(const RemoteOptions& options, const RemoteRequest& request,
                        const std::function<void(const std::string&)>& on_content) {
  const Endpoint endpoint = parse_endpoint(options.endpoint);
  httplib::Client client(endpoint.origin);
  client.set_read_timeout(3600);  // a long prompt's read comes before the first byte
  httplib::Headers headers;
  if (!options.api_key.empty()) headers.emplace("Authorization", "Bearer " + options.api_key);
  auto fail = [&](const std::string& cause) { return Error(options.endpoint + ": " + cause); };

  std::string model = options.model;
  if (model.empty()) {
    const auto models = client.Get(endpoint.path + "/models", headers);
    if (!models) throw fail("cannot reach the server (" + httplib::to_string(models.error()) + ")");
    if (models->status != 200) throw fail("HTTP " + std::to_string(models->status) + ": " + error_message(models->body));
    try {
      model = json::parse(models->body).at("data").at(0).at("id").get<std::string>();
    } catch (const json::exception&) {
      throw fail("/models lists no model; name one with --remote-model");
    }
  }

  json body = {{"model", model},
               {"messages", json::array({{{"role", "user"}, {"content", request.user_text}}})},
               {"max_tokens", request.max_tokens},
               {"temperature", request.temperature},
               {"top_p", request.top_p},
               {"stream", true}};
  if (request.seed) body["seed"] = *request.seed;

  RemoteAnswer answer;
  std::string raw, pending, stream_error;
  httplib::Request post;
  post.method = "POST";
  post.path = endpoint.path + "/chat/completions";
  post.headers = headers;
  post.set_header("Content-Type", "application/json");
  post.body = body.dump();
  // Server-sent events: "data: {...}" lines; an error may come as an event too.
  post.content_receiver = [&](const char* data, std::size_t length, std::uint64_t, std::uint64_t) {
    raw.append(data, length);
    pending.append(data, length);
    for (std::size_t end; (end = pending.find('\n')) != std::string::npos; pending.erase(0, end + 1)) {
      const std::string line = pending.substr(0, end);
      if (line.rfind("data: ", 0) != 0 || line == "data: [DONE]") continue;
      try {
        const json event = json::parse(line.substr(6));
        if (event.contains("error")) stream_error = error_message(line.substr(6));
        for (const json& choice : event.value("choices", json::array())) {
          const json delta = choice.value("delta", json::object());
          if (delta.contains("content") && delta["content"].is_string()) {
            const std::string piece = delta["content"].get<std::string>();
            answer.content += piece;
            if (!piece.empty()) on_content(piece);
          }
          if (delta.contains("reasoning_content") && delta["reasoning_content"].is_string())
            answer.reasoning += delta["reasoning_content"].get<std::string>();
          if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
            answer.finish_reason = choice["finish_reason"].get<std::string>();
        }
      } catch (const json::exception&) {
        stream_error = "the server sent an event that is not JSON: " + line.substr(0, 200);
      }
    }
    return true;
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  if (!client.send(post, response, error)) throw fail("cannot reach the server (" + httplib::to_string(error) + ")");
  if (response.status != 200)
    throw fail("HTTP " + std::to_string(response.status) + ": " + error_message(response.body.empty() ? raw : response.body));
  if (!stream_error.empty()) throw fail(stream_error);
  return answer;
}

}  // namespace lightdesk::remote
#endif
