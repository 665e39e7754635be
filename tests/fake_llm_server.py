"""A local fake of the Anthropic Messages API (and OpenAI chat completions) that plays a
scripted conversation. The real SDKs talk to it over HTTP on 127.0.0.1.

It also plays the Messages API's prompt cache: usage fields a scripted reply leaves as None
are computed from the request. The prompt is the sequence of blocks tools -> system ->
messages; a block with cache_control is a breakpoint. A call reads from the cache the
longest prefix (at any block boundary) that an earlier call stored byte for byte, writes
the prefix up to its last breakpoint if that is new, and stores only prefixes of at least
`min_cache_tokens` (smaller ones are not cached, as on the real API). Tokens are estimated
as characters / 4.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHARS_PER_TOKEN = 4


def message(content, stop_reason, input_tokens=None, output_tokens=50, cache_read=None, cache_write=None):
    """A scripted reply; usage left as None is computed by the server from the request."""
    return 200, {"id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-opus-5", "content": content,
                 "stop_reason": stop_reason, "stop_sequence": None,
                 "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                           "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}}


def prompt_blocks(body: dict) -> list[tuple[bytes, bool]]:
    """(canonical bytes, is a breakpoint) of each block, in the API's cache order."""
    blocks = [dict(t) for t in body.get("tools", [])]
    system = body.get("system", [])
    blocks += [{"type": "text", "text": system}] if isinstance(system, str) else [dict(b) for b in system]
    for m in body["messages"]:
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        blocks += [{**b, "role": m["role"]} for b in content]
    out = []
    for b in blocks:
        marked = b.pop("cache_control", None) is not None  # where the breakpoint sits is not part of the content
        out.append((json.dumps(b, sort_keys=True).encode(), marked))
    return out


class PromptCache:
    def __init__(self, min_tokens: int):
        self.min_tokens = min_tokens
        self.stored: set[str] = set()

    def usage(self, body: dict) -> dict:
        digest, chars, prefixes = hashlib.sha256(), 0, []  # (hash, tokens, is a breakpoint) at every block boundary
        for data, marked in prompt_blocks(body):
            digest.update(data)
            chars += len(data)
            prefixes.append((digest.hexdigest(), chars // CHARS_PER_TOKEN, marked))
        total = prefixes[-1][1] if prefixes else 0
        read = max((tokens for h, tokens, _ in prefixes if h in self.stored), default=0)
        marks = [(h, tokens) for h, tokens, marked in prefixes if marked and tokens >= self.min_tokens]
        write = 0
        if marks and marks[-1][0] not in self.stored:
            write = marks[-1][1] - read
        self.stored.update(h for h, _ in marks)
        return {"input_tokens": total - read - write, "cache_creation_input_tokens": write, "cache_read_input_tokens": read}


def tool_use(id_, name, args):
    return {"type": "tool_use", "id": id_, "name": name, "input": args}


def text(t):
    return {"type": "text", "text": t}


def rate_limited():
    return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


class FakeServer:
    def __init__(self, script: list[tuple[int, dict]], min_cache_tokens: int = 1024):
        self.script = list(script)
        self.requests: list[dict] = []
        self.replies: list[dict] = []  # what was sent back, usage as reported
        self.cache = PromptCache(min_cache_tokens)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, payload = server.script.pop(0) if server.script else (500, {"type": "error", "error": {"type": "api_error", "message": "script exhausted"}})
                if self.path == "/v1/messages" and status == 200:
                    computed = server.cache.usage(body)
                    payload = {**payload, "usage": {k: computed[k] if v is None else v for k, v in payload["usage"].items()}}
                server.replies.append(payload)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)  # shutdown() waits a poll: 0.5 s by default

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
