#!/usr/bin/env python3
"""lightdesk-server against its clients: plain curl (--client curl) or the `openai` Python package
(--client openai, run by the virtual environment's python that .ci/run creates; without it the
test is skipped). Each check starts the server it needs on a free loopback port over the tiny
model, with short answers, and the references are independent of the server: lightdesk-cli's
own generation, the same request streamed and not, a server that keeps no states."""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77  # ctest's SKIP_RETURN_CODE


class Server:
    """A server on a free port; its states in `data_dir` (default: a fresh directory of its own)."""

    def __init__(self, binary, model, *flags, data_dir=None):
        self.scratch = None if data_dir else tempfile.TemporaryDirectory()
        self.data_dir = data_dir or self.scratch.name
        self.process = subprocess.Popen([binary, "--model", model, "--port", "0", "--threads", "1",
                                         "--data-dir", self.data_dir, *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.process.stdout.readline()
        if "serving" not in line:
            self.process.kill()
            raise RuntimeError("the server did not start: " + line + self.process.stdout.read())
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
        # The backend the model runs on, and on the CPU why not CUDA.
        self.backend_line = self.process.stdout.readline()
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the server did not stop on SIGTERM")
        finally:
            if self.scratch:
                self.scratch.cleanup()

    def health(self):
        return json.loads(curl(self, "GET", "/health")[1])


def curl(server, method, path, body=None, headers=(), raw=None):
    """Status and body of one request made by curl."""
    args = ["curl", "-s", "--noproxy", "*", "-X", method, "-w", "\n%{http_code}", server.base + path]
    for h in headers:
        args += ["-H", h]
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    out = subprocess.run(args, input=data, capture_output=True, check=True).stdout.decode()
    text, status = out.rsplit("\n", 1)
    return int(status), text


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def check_error(status, text, expected_status, fragment):
    check(status == expected_status, f"expected HTTP {expected_status}, got {status}: {text}")
    error = json.loads(text)["error"]
    check(fragment in error["message"], f"error message lacks {fragment!r}: {error}")
    check(error["type"], f"error without type: {error}")


def sse_events(text):
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def chat_body(content, **extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


def stream_and_disconnect(server, path, body, events_before_closing=2):
    """Opens a streamed request on a raw socket, reads a few events and goes away."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while received.count(b"data: ") < events_before_closing:
            chunk = s.recv(4096)
            check(chunk, "the server closed the stream early")
            received += chunk


def wait_for(condition, what, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


# ---- curl ----

def curl_checks(args):
    with Server(args.server, args.model) as server:
        check(server.backend_line.startswith("lightdesk-server: the model runs on the cuda")
              or server.backend_line.startswith("lightdesk-server: the model runs on the cpu (the cuda backend is "
                                                "not available: "), server.backend_line)
        status, text = curl(server, "GET", "/v1/models")
        check(status == 200 and json.loads(text)["data"][0]["id"] == "tiny-a-m1-rd8", text)

        # A raw completion is what lightdesk-cli generates from the same text, greedily.
        reference = subprocess.run([args.cli, "generate", "--model", args.model, "--prompt", "The quick brown fox",
                                    "--max-new-tokens", "12", "--threads", "1"],
                                   capture_output=True, check=True).stdout.decode()[:-1]
        status, text = curl(server, "POST", "/v1/completions",
                            {"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0})
        check(status == 200, text)
        check(json.loads(text)["choices"][0]["text"] == reference,
              f"completion {json.loads(text)['choices'][0]['text']!r} != lightdesk-cli's {reference!r}")

        # Streamed and not, the same answer; the stream ends with the finish reason and [DONE].
        status, text = curl(server, "POST", "/v1/chat/completions", chat_body("hello", max_tokens=8))
        whole = json.loads(text)
        check(whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 8, text)
        status, text = curl(server, "POST", "/v1/chat/completions", chat_body("hello", max_tokens=8, stream=True))
        events = sse_events(text)
        check(events[-1] == "[DONE]", text)
        chunks = [json.loads(e) for e in events[:-1]]
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        check(streamed == whole["choices"][0]["message"]["content"], f"{streamed!r} != {whole!r}")
        check(chunks[-1]["choices"][0]["finish_reason"] == "length", text)

        # Bad requests: an error object each, and the server goes on.
        check_error(*curl(server, "POST", "/v1/chat/completions", raw=b'{"messages": [}'), 400, "not valid JSON")
        check_error(*curl(server, "POST", "/v1/chat/completions", chat_body("hi", bogus=1)), 400, "bogus")
        check_error(*curl(server, "POST", "/v1/chat/completions", {"messages": "hi"}), 400, "messages")
        check_error(*curl(server, "POST", "/v1/chat/completions", chat_body("hi", max_tokens=0)), 400, "max_tokens")
        check_error(*curl(server, "POST", "/v1/chat/completions", chat_body("hi", max_tokens=4096)), 400, "context")
        check_error(*curl(server, "POST", "/v1/chat/completions", chat_body("hi", temperature="hot")), 400,
                    "temperature")
        check_error(*curl(server, "POST", "/v1/completions", {"prompt": 5}), 400, "prompt")
        check_error(*curl(server, "GET", "/v1/nothing"), 404, "no such endpoint")
        check_error(*curl(server, "POST", "/v1/completions", raw=b"x" * (17 << 20)), 413, "limit")
        check(curl(server, "GET", "/v1/models")[0] == 200, "the server stopped answering after bad requests")

        # A client gone mid-stream stops its generation; the next request is served.
        stream_and_disconnect(server, "/v1/completions",
                              {"prompt": "hello", "max_tokens": 3000, "temperature": 0, "stream": True})
        wait_for(lambda: server.health()["cancelled"] == 1, "the disconnected stream to be cancelled")
        check(curl(server, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200, "after a disconnect")

    # lightdesk-cli ask --endpoint: the question goes as the local ask renders it, so the server's
    # greedy answer is the local one; a wrong key is a one-line error.
    document = os.path.join(os.path.dirname(args.model), "documents", "latin1.txt")
    ask = [args.cli, "ask", "--document", document, "--question", "What is this?", "--max-new-tokens", "8", "--greedy"]
    local = subprocess.run(ask + ["--model", args.model, "--threads", "1"], capture_output=True, check=True).stdout
    with Server(args.server, args.model, "--api-key", "k") as server:
        remote = subprocess.run(ask + ["--endpoint", server.base, "--api-key", "k"], capture_output=True)
        check(remote.returncode == 0, remote.stderr.decode())
        check(remote.stdout == local, f"ask --endpoint answered {remote.stdout!r}, locally {local!r}")
        refused = subprocess.run(ask + ["--endpoint", server.base + "/v1", "--api-key", "wrong"], capture_output=True)
        check(refused.returncode != 0 and b"401" in refused.stderr and refused.stderr.count(b"\n") == 1,
              f"a wrong key: {refused.returncode} {refused.stderr!r}")

    # One request runs and one waits: more at once are refused with 429.
    with Server(args.server, args.model, "--queue", "1", "--states-in-memory") as server:
        statuses = []
        def ask():
            statuses.append(curl(server, "POST", "/v1/completions",
                                 {"prompt": "hello", "max_tokens": 3000, "temperature": 0})[0])
        threads = [threading.Thread(target=ask) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429},
              f"statuses of 5 concurrent requests with --queue 1: {statuses}")
        check(server.health()["refused_busy"] == statuses.count(429), "refusals counted")

    # --expert-dtype auto: the memory planner's choice for this machine, said after the two first lines.
    with Server(args.server, args.model, "--expert-dtype", "auto") as server:
        plan = server.process.stdout.readline()
        check("the memory planner's choice: float32 weights in host memory" in plan, f"the plan line: {plan!r}")
        check(curl(server, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200, "a planned model answers")

    # An API key asked for.
    with Server(args.server, args.model, "--api-key", "secret") as server:
        check_error(*curl(server, "GET", "/v1/models"), 401, "API key")
        check_error(*curl(server, "GET", "/v1/models", headers=["Authorization: Bearer wrong"]), 401, "API key")
        check(curl(server, "GET", "/v1/models", headers=["Authorization: Bearer secret"])[0] == 200, "the right key")


# ---- openai ----

def openai_checks(args):
    # The client lives in the virtual environment: run there when it exists.
    if args.venv_python and os.path.exists(args.venv_python) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.dirname(os.path.dirname(args.venv_python))):
        os.execv(args.venv_python, [args.venv_python, *sys.argv])
    try:
        import openai
    except ImportError:
        print("SKIP: the `openai` Python package is missing: run `python3 -m venv build/venv && "
              "build/venv/bin/pip install openai` (as .ci/run does)")
        return SKIP

    with Server(args.server, args.model) as server:
        # Clients closed before their server stops: an open keep-alive connection holds its stop.
        with openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0) as client:
            messages = [{"role": "user", "content": "hello there"}]
            first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
            text = first.choices[0].message.content
            check(first.choices[0].finish_reason == "length" and first.usage.completion_tokens == 12, str(first))

            # Streamed with the usage asked for: the same text.
            pieces, usage = [], None
            for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                        stream=True, stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                usage = chunk.usage or usage
            check("".join(pieces) == text, f"streamed {''.join(pieces)!r} != {text!r}")
            check(usage and usage.completion_tokens == 12, f"usage {usage}")

            # A stop sequence cuts the answer where it first appears.
            stop = text[len(text) // 2:len(text) // 2 + 2]
            cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stop=[stop])
            check(cut.choices[0].finish_reason == "stop", str(cut))
            check(cut.choices[0].message.content == text[:text.find(stop)],
                  f"stopped at {stop!r}: {cut.choices[0].message.content!r}, expected {text[:text.find(stop)]!r}")

            # max_tokens on raw completions.
            short = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=3, temperature=0)
            check(short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length", str(short))

            # Concurrent requests wait their turn and get what they would alone.
            answers = []
            def ask():
                answers.append(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                                              temperature=0).choices[0].message.content)
            threads = [threading.Thread(target=ask) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            check(answers == [text] * 4, f"concurrent answers {answers} != {text!r}")

            # A follow-up restores the state kept at the end of the first prompt (its rendered tokens
            # are a prefix of the follow-up's), and answers as a server that kept no state does.
            follow_up = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": "and then?"}]
            warm = client.chat.completions.create(model="tiny", messages=follow_up, max_tokens=12, temperature=0)
            check(warm.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens,
                  f"follow-up reused {warm.usage.prompt_tokens_details.cached_tokens} tokens, "
                  f"expected at least the first prompt's {first.usage.prompt_tokens}")

            # A client that leaves mid-stream cancels its generation.
            stream = client.completions.create(model="tiny", prompt="hello", max_tokens=3000, temperature=0, stream=True)
            next(iter(stream))
            stream.close()
            wait_for(lambda: server.health()["cancelled"] == 1, "the closed stream to be cancelled")

            # Errors arrive as the client's exceptions.
            try:
                client.chat.completions.create(model="tiny", messages=messages, extra_body={"bogus": 1})
                raise AssertionError("an unknown field was accepted")
            except openai.BadRequestError as e:
                check("bogus" in str(e), str(e))

    # The states are in the data directory's database: a restarted server reuses them.
    states = tempfile.TemporaryDirectory()
    with Server(args.server, args.model, data_dir=states.name) as server:
        with openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0) as client:
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    with Server(args.server, args.model, data_dir=states.name) as server:
        with openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0) as client:
            restarted = client.chat.completions.create(model="tiny", messages=follow_up, max_tokens=12, temperature=0)
    states.cleanup()
    check(restarted.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens,
          f"after a restart the follow-up reused {restarted.usage.prompt_tokens_details.cached_tokens} tokens")
    check(restarted.choices[0].message.content == warm.choices[0].message.content, "restarted answer differs")

    with Server(args.server, args.model, "--state-cache-mib", "0") as cold_server:
        with openai.OpenAI(base_url=cold_server.base + "/v1", api_key="unused", max_retries=0) as cold_client:
            cold = cold_client.chat.completions.create(model="tiny", messages=follow_up, max_tokens=12, temperature=0)
        check(cold.usage.prompt_tokens_details.cached_tokens == 0, str(cold.usage))
        check(cold.choices[0].message.content == warm.choices[0].message.content,
              f"reused state answered {warm.choices[0].message.content!r}, cold {cold.choices[0].message.content!r}")

    with Server(args.server, args.model, "--api-key", "secret") as server:
        with openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0) as wrong:
            try:
                wrong.models.list()
                raise AssertionError("a wrong API key was accepted")
            except openai.AuthenticationError:
                pass
        with openai.OpenAI(base_url=server.base + "/v1", api_key="secret", max_retries=0) as right:
            models = right.models.list()
        check([m.id for m in models.data] == ["tiny-a-m1-rd8"], str(models))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=["curl", "openai"], required=True)
    parser.add_argument("--server", required=True, help="lightdesk-server")
    parser.add_argument("--cli", help="lightdesk-cli (for --client curl's reference)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--venv-python", help="the python of a virtual environment that has `openai`")
    args = parser.parse_args()
    result = curl_checks(args) if args.client == "curl" else openai_checks(args)
    if result == SKIP:
        return SKIP
    print(f"lightdesk-server passed the {args.client} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
