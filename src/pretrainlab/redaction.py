"""Masking of secrets in what the lab shows: the dashboard's pages and the MCP server's results.
Ledger text comes from models and people, and a run's files from experiment code; any of it may
quote an API key, and no face may show one.

    scrub("export ANTHROPIC_API_KEY=sk-ant-...")   # 'export [redacted]'
    scrub("postgresql://lab:hunter2@db/lab")       # 'postgresql://lab:[redacted]@db/lab'
    redact({"api_key": "x", "bytes_per_token": 3.9, "note": "..."})  # {"api_key": "[redacted]", "bytes_per_token": 3.9, ...}

A value is masked for its shape (a string that looks like a key) or, when it is text, for its
name (api_key, password, token...). A number is never a secret: bytes_per_token and
flops_per_token are figures, and stay as they are.
"""

from __future__ import annotations

import re

# key-shaped strings: Anthropic, OpenAI, Hugging Face, GitHub, Slack and AWS keys, and NAME=VALUE
# assignments of variables that hold secrets
_KEYS = (r"sk-ant-[A-Za-z0-9_\-]{8,}|sk-(?:proj-)?[A-Za-z0-9_\-]{20,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
         r"|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}"
         r"|\b[A-Z0-9_]*(?:API_KEY|SECRET|PASSWORD|ACCESS_TOKEN|AUTH_TOKEN)\b\s*[=:]\s*['\"]?")
SECRET = re.compile(_KEYS + r"[^\s'\"]+")
# in markup already escaped, the value stops at a backslash or a markup character: masking must never eat an escape
# (\" in JSON) or a tag, or the page's script and HTML break around it
SECRET_IN_MARKUP = re.compile(_KEYS + r"[^\s'\"\\<>&]+")
# the password of a URL (postgresql://USER:PASSWORD@HOST/DB, the ledger's --db): the rest of the URL stays readable
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]*:)[^\s@/'\"<>\\&]+(?=@)")
SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|passwd|credentials?|authorization|token)$")
REDACTED = "[redacted]"


def scrub(text: str, markup: bool = False) -> str:
    """The text with anything shaped like an API key, and a URL's password, replaced."""
    return URL_PASSWORD.sub(r"\1" + REDACTED, (SECRET_IN_MARKUP if markup else SECRET).sub(REDACTED, text))


def redact(value, secret: bool = False):
    """A JSON value with every string scrubbed, and the text under a secret-named key (at any
    depth below it) replaced; numbers, booleans and None stay as they are."""
    if isinstance(value, dict):
        return {k: redact(v, secret or bool(SECRET_KEY.search(str(k).lower()))) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if isinstance(value, str):
        return REDACTED if secret else scrub(value)
    return value
