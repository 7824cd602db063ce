"""Import a class a user names as ``"package.module:ClassName"``.

Policies, storage backends and origins can all be the user's own code, named in
a config as ``"package.module:ClassName"``. :func:`import_target` is the one
place such a name is imported; every failure is an :class:`ImportError` whose
message names what was asked for, quotes every name in full, suggests the
closest attribute and, for a module that is not found, hints at PYTHONPATH.

Thread-safety: as far as :mod:`importlib` is. Runs the module's code: trusted
configs only.
"""

from __future__ import annotations

import difflib
import importlib

#: What to check when a user's module is not found.
IMPORT_HINT = "from a checkout, run with PYTHONPATH=. or python -m tiercache"


def import_target(target: str, what: str) -> object:
    """Import ``"package.module:Attr.Path"``; ``what`` names it in messages (e.g.
    ``"policy spec 'm:C'"``). Raises :class:`ModuleNotFoundError` (with the PYTHONPATH
    hint) when the module itself is missing, :class:`ImportError` otherwise. O(import)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ImportError(f"{what} must look like 'package.module:ClassName'")
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ModuleNotFoundError(f"{what}: no module named {missing!r} ({IMPORT_HINT})",
                                      name=missing) from None
        raise ImportError(f"{what}: module {module_name!r} needs module {missing!r}, which "
                          "is not installed", name=module_name) from None
    except Exception as exc:  # the user's module raised while importing (SyntaxError, ...)
        raise ImportError(f"{what}: importing module {module_name!r} failed: "
                          f"{type(exc).__name__}: {exc}", name=module_name) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            close = difflib.get_close_matches(part, [n for n in dir(obj)
                                                     if not n.startswith("_")], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ImportError(f"{what}: module {module_name!r} has no attribute "
                              f"{attr!r}{hint}", name=module_name) from None
    return obj
