#!/usr/bin/env python3
"""Time to first token of lightdesk-server (or any OpenAI-compatible server) for a question about a
long document, cold, then for a follow-up in the same conversation, which a server that keeps
states restores instead of prefilling. Standard library only.

  build/app/server/lightdesk-server --model resources/models/lightdesk-demo --data-dir /tmp/ld &
  tools/server_reuse_ttft.py --base http://127.0.0.1:8080 --document resources/demo/demo.txt
"""
import argparse
import json
import time
import urllib.request


def first_token_seconds(base, messages, max_tokens):
    """Seconds to the first streamed token, the answer, and the prompt tokens cached."""
    body = {"model": "any", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start, first, answer, usage = time.time(), None, "", None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("content") or delta.get("reasoning_content"):
                    first = first or time.time() - start
                    answer += delta.get("content") or ""
    return first, answer, usage


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--document", required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    with open(args.document, encoding="utf-8") as f:
        document = f.read()
    messages = [{"role": "user", "content": f"Document: {args.document}\n{document}\n\nQuestion: What is the pass key?"}]
    cold, answer, usage = first_token_seconds(args.base, messages, args.max_tokens)
    print(f"cold: first token after {cold:.3f} s, {usage['prompt_tokens']} prompt tokens, "
          f"{usage['prompt_tokens_details']['cached_tokens']} cached")
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Where does it say so?"}]
    warm, _, usage = first_token_seconds(args.base, messages, args.max_tokens)
    print(f"follow-up: first token after {warm:.3f} s, {usage['prompt_tokens']} prompt tokens, "
          f"{usage['prompt_tokens_details']['cached_tokens']} cached")


if __name__ == "__main__":
    main()
