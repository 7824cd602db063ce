"""Child process of tests/project/test_docs.py: runs the Python blocks of the documentation pages.

Protocol: one JSON object per line on stdin, ``{"page": "docs/x.md", "folder": "/tmp/..",
"path": "docs/x.md", "line": 12, "code": "..."}`` (``line``: the first line of the code in
the page); one JSON line back on the original stdout, ``{"ok": true}`` or ``{"ok": false,
"error": "..."}``. The blocks of one page run in one namespace, in the order received, so a
block may use what an earlier one defined, as a reader typing the page into one
interpreter would; each page has its own namespace. A block runs in its page's folder,
which also comes first on ``sys.path``, as for ``python`` started there. What the blocks
print goes to stderr (the parent keeps it in a log). Tracebacks name the page and its
lines. Not thread-safe (one request at a time); each block costs what its code costs.
"""

from __future__ import annotations

import json
import linecache
import os
import sys
import traceback
from typing import Any


def run_block(namespace: dict[str, Any], path: str, line: int, code: str) -> str | None:
    """Execute ``code`` (from ``path``, starting at ``line``) in ``namespace``.

    Returns None on success, else the traceback from the page's first frame on (the
    worker's own frames are dropped).
    """
    source = "\n" * (line - 1) + code
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)  # tracebacks
    try:
        exec(compile(source, path, "exec"), namespace)
    except BaseException as exc:  # reported to the parent, which fails the test
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(exc), exc, tb))
    return None


def main() -> None:
    """Serve requests until stdin closes."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # prints (Python's and C libraries') go to stderr, never the protocol
    namespaces: dict[str, dict[str, Any]] = {}
    sys.path.insert(0, "")
    for request_line in sys.stdin:
        request = json.loads(request_line)
        os.chdir(request["folder"])
        sys.path[0] = request["folder"]
        namespace = namespaces.setdefault(request["page"], {"__name__": "__main__"})
        error = run_block(namespace, request["path"], request["line"], request["code"])
        sys.stdout.flush()
        sys.stderr.flush()
        reply = {"ok": True} if error is None else {"ok": False, "error": error}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
