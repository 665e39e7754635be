"""What an LLM strategy sees of the lab's own source.

    harness_context()                      # code map + every editable harness file, numbered
    read_page("train/trainer.py", 301)     # one page of a file: numbered lines, says what is left

Source reaches the model as plain text with line numbers (never a JSON-escaped string),
whole lines only, and a page that stops before the end of the file says so and names the
call that returns the next page. `harness_context()` is the stable part of the Claude
prompt: it is built once per strategy, so every call of a campaign sends the same bytes
and the API's prompt cache can serve them.
"""

from __future__ import annotations

import ast
import functools

from .patches import EDITABLE, PACKAGE_DIR

READABLE = ("model/", "train/", "eval.py", "config.py", "recipes.py", "data/loader.py")
PAGE_CHARS = 18_000  # a page stays under the agent loop's 20,000-character cap on one tool result


def numbered(lines: list[str], first: int) -> str:
    """`cat -n` style: the number the model cites in a patch or a rationale, a tab, the line."""
    return "\n".join(f"{first + i:>5}\t{line}" for i, line in enumerate(lines))


def readable_path(path: str):
    """The file under the package for a package- or repository-relative path; ValueError if not readable."""
    rel = path.strip().removeprefix("src/pretrainlab/")
    file = (PACKAGE_DIR / rel).resolve()
    if not rel.startswith(READABLE) or PACKAGE_DIR not in file.parents or not file.is_file():
        raise ValueError(f"cannot read {path!r}: readable files are under {', '.join(READABLE)}")
    return rel, file


def read_page(path: str, offset: int = 1, limit: int = 300, max_chars: int = PAGE_CHARS) -> str:
    """Lines offset..offset+limit-1 of a readable file (fewer if they pass max_chars), with
    a header naming the range and a footer that says whether the file goes on."""
    rel, file = readable_path(path)
    lines = file.read_text().splitlines()
    total = len(lines)
    if offset > max(total, 1):
        raise ValueError(f"offset {offset} is past the end of {rel} ({total} lines)")
    page, size = [], 0
    for line in lines[offset - 1: offset - 1 + limit]:
        size += len(line) + 7  # the number column and the newline
        if page and size > max_chars:
            break
        page.append(line)
    last = offset + len(page) - 1
    header = f"src/pretrainlab/{rel}: lines {offset}-{last} of {total}"
    if last < total:
        footer = (f"[cut: lines {last + 1}-{total} are not shown; call read_code with "
                  f'{{"path": "{rel}", "offset": {last + 1}}} for the next page]')
    else:
        footer = "[end of file]"
    return f"{header}\n{numbered(page, offset)}\n{footer}"


def code_map() -> str:
    """One line per module of the package: its path, the first line of its docstring and its
    public top-level names."""
    out = []
    for file in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(file.read_text())
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        names = [node.name for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_")]
        out.append(f"- {file.relative_to(PACKAGE_DIR).as_posix()}: {doc[0] if doc else '(no docstring)'}"
                   + (f" [{', '.join(names)}]" if names else ""))
    return "\n".join(out)


@functools.lru_cache(maxsize=1)  # ~0.4 s of parsing; a process runs the package it started with
def harness_context() -> str:
    """The code map, then the full numbered text of every file a code patch may change."""
    parts = ["# Code map of src/pretrainlab (module: summary [public names])", code_map(), "",
             f"# The harness files a code patch may change ({', '.join(EDITABLE)}), numbered as read_code numbers them"]
    for prefix in EDITABLE:
        for file in sorted((PACKAGE_DIR / prefix.removeprefix("src/pretrainlab/")).rglob("*.py")):
            rel = file.relative_to(PACKAGE_DIR).as_posix()
            lines = file.read_text().splitlines()
            parts += ["", f"## src/pretrainlab/{rel} ({len(lines)} lines)", numbered(lines, 1)]
    return "\n".join(parts)
