"""Masking of secrets in what the lab shows: the dashboard's pages and the MCP server's results.
Ledger text comes from models and people, and a run's files from experiment code; any of it may
quote an API key, and no face may show one.

    scrub("export ANTHROPIC_API_KEY=sk-ant-...")   # 'export [redacted]'
    redact({"api_key": "x", "note": "..."})       # secret-named keys' values replaced, every string scrubbed
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
SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|passwd|credentials?|authorization|token)$")
REDACTED = "[redacted]"


def scrub(text: str, markup: bool = False) -> str:
    """The text with anything shaped like an API key replaced."""
    return (SECRET_IN_MARKUP if markup else SECRET).sub(REDACTED, text)


def redact(value):
    """A JSON value with every secret-named key's value replaced and every string scrubbed."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k).lower()) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value
