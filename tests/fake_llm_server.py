"""A local fake of the Anthropic Messages API (and OpenAI chat completions) that plays a
scripted conversation. The real SDKs talk to it over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def message(content, stop_reason, input_tokens=100, output_tokens=50, cache_read=0, cache_write=0):
    return 200, {"id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-opus-5", "content": content,
                 "stop_reason": stop_reason, "stop_sequence": None,
                 "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                           "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}}


def tool_use(id_, name, args):
    return {"type": "tool_use", "id": id_, "name": name, "input": args}


def text(t):
    return {"type": "text", "text": t}


def rate_limited():
    return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


class FakeServer:
    def __init__(self, script: list[tuple[int, dict]]):
        self.script = list(script)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, payload = server.script.pop(0) if server.script else (500, {"type": "error", "error": {"type": "api_error", "message": "script exhausted"}})
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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
