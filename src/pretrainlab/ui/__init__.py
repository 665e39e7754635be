"""The web dashboard: `pretrainlab ui`.

    pretrainlab ui                                   # http://127.0.0.1:8780, the workspace's ledger
    pretrainlab ui --db postgresql://lab@db/lab --host 0.0.0.0 --author alice   # a team's, with a token

Campaigns with a live leaderboard, progress chart, slot timeline and LLM spend; experiments
with their hypothesis, proposer, change, runs, decisions and the doctor's findings; runs with
their curves at full resolution (overlaid with /compare?runs=A,B); the decisions log with
approve / reject; the data corpora. A face like the CLI and the MCP server: every read and
write is a `pretrainlab.api` call. FastAPI and uvicorn serve it; the charts are the package's
own script (static/chart.js), so it works offline. Who may use it: security.py.
"""

from __future__ import annotations

import secrets
import sys

from ..errors import UserError

INSTALL = "the dashboard needs fastapi, uvicorn and jinja2: pip install 'pretrainlab[ui]'"
DEFAULT_PORT = 8780  # `pretrainlab mcp --http` takes 8765


def create_app(db: str | None = None, author: str = "person", token: str | None = None, host: str = "127.0.0.1"):
    """The dashboard as an ASGI app (see app.create_app)."""
    _require()
    from .app import create_app as build

    return build(db=db, author=author, token=token, host=host)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, db: str | None = None, author: str = "person",
          open_browser: bool = False) -> None:
    """Serve the dashboard until interrupted. Bound beyond loopback it makes an access token
    and prints the address that carries it (once; the browser then keeps it in a cookie)."""
    _require()
    import uvicorn

    from .security import is_loopback

    _check_port(host, port)
    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    app = create_app(db=db, author=author, token=token, host=host)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"pretrainlab ui: {url}", flush=True)
    if token:
        print("reachable from the network with that token; plain HTTP: use an SSH tunnel or a TLS proxy on untrusted networks",
              file=sys.stderr, flush=True)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_port(host: str, port: int) -> None:
    import socket

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 0-65535 (0: any free one)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); pick another --port") from None


def _require() -> None:
    import importlib

    for name in ("fastapi", "jinja2", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(INSTALL) from None
