#include "remote_chat.h"

#include "lightdesk/engine.h"

#ifdef LIGHTDESK_WITHOUT_HTTP
namespace lightdesk::remote {
[[noreturn]] void without_http() {
  throw Error("this program was built without cpp-httplib, so it cannot talk to an endpoint");
}
std::string remote_model(const RemoteOptions&) { without_http(); }
RemoteAnswer ask_remote(const RemoteOptions&, const RemoteRequest&,
                        const std::function<bool(const std::string&, const std::string&)>&) {
  without_http();
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
    throw Error("the endpoint must be an http:// or https:// URL, got \"" + url + "\"");
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

// A client of the endpoint's origin, and the headers every request carries.
struct Connection {
  Endpoint endpoint;
  httplib::Client client;
  httplib::Headers headers;

  explicit Connection(const RemoteOptions& options)
      : endpoint(parse_endpoint(options.endpoint)), client(endpoint.origin) {
    client.set_read_timeout(3600);  // a long prompt's read comes before the first byte
    if (!options.api_key.empty()) headers.emplace("Authorization", "Bearer " + options.api_key);
  }
};

Error failure(const RemoteOptions& options, const std::string& cause) { return Error(options.endpoint + ": " + cause); }

std::string model_of(const RemoteOptions& options, Connection& connection) {
  if (!options.model.empty()) return options.model;
  const auto models = connection.client.Get(connection.endpoint.path + "/models", connection.headers);
  if (!models) throw failure(options, "cannot reach the server (" + httplib::to_string(models.error()) + ")");
  if (models->status != 200)
    throw failure(options, "HTTP " + std::to_string(models->status) + ": " + error_message(models->body));
  try {
    return json::parse(models->body).at("data").at(0).at("id").get<std::string>();
  } catch (const json::exception&) {
    throw failure(options, "/models lists no model; name the one to use");
  }
}

}  // namespace

std::string remote_model(const RemoteOptions& options) {
  Connection connection(options);
  return model_of(options, connection);
}

RemoteAnswer ask_remote(const RemoteOptions& options, const RemoteRequest& request,
                        const std::function<bool(const std::string&, const std::string&)>& on_delta) {
  Connection connection(options);
  const Endpoint& endpoint = connection.endpoint;
  auto& client = connection.client;
  const auto& headers = connection.headers;
  auto fail = [&](const std::string& cause) { return failure(options, cause); };
  const std::string model = model_of(options, connection);

  json messages = json::array();
  for (const RemoteMessage& message : request.messages)
    messages.push_back({{"role", message.role}, {"content", message.content}});
  json body = {{"model", model},
               {"messages", messages},
               {"max_tokens", request.max_tokens},
               {"temperature", request.temperature},
               {"top_p", request.top_p},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
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
        if (event.contains("usage") && event["usage"].is_object()) {
          answer.prompt_tokens = event["usage"].value("prompt_tokens", std::int64_t{0});
          answer.completion_tokens = event["usage"].value("completion_tokens", std::int64_t{0});
        }
        for (const json& choice : event.value("choices", json::array())) {
          const json delta = choice.value("delta", json::object());
          std::string reasoning, content;
          if (delta.contains("reasoning_content") && delta["reasoning_content"].is_string())
            reasoning = delta["reasoning_content"].get<std::string>();
          if (delta.contains("content") && delta["content"].is_string()) content = delta["content"].get<std::string>();
          answer.reasoning += reasoning;
          answer.content += content;
          if ((!reasoning.empty() || !content.empty()) && !on_delta(reasoning, content)) answer.stopped = true;
          if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
            answer.finish_reason = choice["finish_reason"].get<std::string>();
        }
      } catch (const json::exception&) {
        stream_error = "the server sent an event that is not JSON: " + line.substr(0, 200);
      }
    }
    return !answer.stopped;
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  if (!client.send(post, response, error)) {
    if (answer.stopped) return answer;
    throw fail("cannot reach the server (" + httplib::to_string(error) + ")");
  }
  if (response.status != 200)
    throw fail("HTTP " + std::to_string(response.status) + ": " + error_message(response.body.empty() ? raw : response.body));
  if (!stream_error.empty()) throw fail(stream_error);
  return answer;
}

}  // namespace lightdesk::remote
#endif
