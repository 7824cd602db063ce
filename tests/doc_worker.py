"""Child process of tests/test_docs.py: runs the Python blocks of one documentation page.

Protocol: one JSON object per line on stdin, ``{"path": "docs/x.md", "line": 12, "code":
"..."}`` (``line``: the first line of the code in the page); one JSON line back on the
original stdout, ``{"ok": true}`` or ``{"ok": false, "error": "..."}``. Every block of the
page runs in the same namespace, in the order received, so a block may use what an earlier
one defined, as a reader typing the page into one interpreter would. What the blocks print
goes to stderr (the parent keeps it in a log). Tracebacks name the page and its line
numbers. The working directory is the page's folder and comes first on ``sys.path``, as
for ``python`` started there. Not thread-safe (one request at a time); each block costs
what its code costs.
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

    Returns None on success, else the traceback limited to the page's own frames and
    below (the worker's frames are dropped).
    """
    source = "\n" * (line - 1) + code
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)  # tracebacks
    try:
        compiled = compile(source, path, "exec")
        exec(compiled, namespace)
    except BaseException as exc:  # reported to the parent, which fails the test
        frames = traceback.extract_tb(exc.__traceback__)
        keep = [i for i, frame in enumerate(frames) if frame.filename == path]
        tb = exc.__traceback__
        for _ in range(keep[0] if keep else 0):
            tb = tb.tb_next if tb is not None else None
        return "".join(traceback.format_exception(type(exc), exc, tb))
    return None


def main() -> None:
    """Serve requests until stdin closes."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # prints (Python's and C libraries') go to stderr, never the protocol
    sys.path[0] = os.getcwd()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for request_line in sys.stdin:
        request = json.loads(request_line)
        error = run_block(namespace, request["path"], request["line"], request["code"])
        sys.stdout.flush()
        sys.stderr.flush()
        reply = {"ok": True} if error is None else {"ok": False, "error": error}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
