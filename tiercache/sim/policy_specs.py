"""Policy specs: ``"2q(a_in_size_ratio=0.3)"`` strings, and the policies they name.

:func:`parse_policy_spec` splits a spec into its name and options (parsed by
:mod:`ast`, never evaluated); :func:`split_policies` splits a comma-separated
list of specs; :func:`load_policy` finds the class a spec names (a registered
name or ``"package.module:Class"``); :func:`make_policy` builds one, handing an
offline policy (OPT) the trace's future. :mod:`tiercache.sim.replay` drives
what these build.

Thread-safety: pure functions; no shared state.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt

from ..errors import PolicyError, SimulationError
from ..policies import Policy, get_policy_class

__all__ = ["OptionValue", "PolicySpec", "load_policy", "make_policy", "parse_policy_spec",
           "split_policies"]

#: A policy as :func:`load_policy` takes it: a name, a ``"module:Class"`` spec or a class.
PolicySpec = str | type[Policy]

#: The types a policy option may take in a spec string: ``2q(a_in_size_ratio=0.3)``.
OptionValue = int | float | bool | str
_BOOL_WORDS = {"true": True, "false": False}


def _spec_error(spec: str, reason: str) -> PolicyError:
    return PolicyError(f"policy spec {spec!r}: {reason}; expected NAME or "
                       "NAME(key=value, ...), e.g. 2q(a_in_size_ratio=0.3)")


def _option_value(spec: str, key: str, node: ast.expr) -> OptionValue:
    """A keyword's value: a number, a bool, a quoted string or a bare word (a string)."""
    if isinstance(node, ast.Name):  # a bare word: true/false, else the word itself
        return _BOOL_WORDS.get(node.id.lower(), node.id)
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (int, float, bool, str)):
        raise _spec_error(spec, f"option {key!r} = {ast.unparse(node)[:60]!r} is not an int, "
                                "float, bool or string")
    return value


def parse_policy_spec(spec: str) -> tuple[str, dict[str, OptionValue]]:
    """Split ``"NAME(key=value, ...)"`` into ``(NAME, {key: value})``.

    ``NAME`` is anything :func:`load_policy` takes (``lru``,
    ``package.module:Class``). Values are Python literals -- ints, floats,
    ``True``/``False`` (also ``true``/``false``), quoted strings -- or a bare word,
    read as a string. ``"lru"`` gives ``("lru", {})``. Raises
    :class:`~tiercache.errors.PolicyError` naming the spec for bad syntax (a
    missing ``)``, a value without a key, a repeated key, a list value...).
    O(len(spec)); pure, thread-safe. The arguments are parsed by :mod:`ast`,
    never evaluated.
    """
    text = spec.strip()
    if "(" not in text and ")" not in text:
        if not text:
            raise _spec_error(spec, "empty policy name")
        return text, {}
    name, _, rest = text.partition("(")
    name = name.strip()
    if not name or ")" in name:
        raise _spec_error(spec, "no policy name before '('")
    if not rest.rstrip().endswith(")"):
        raise _spec_error(spec, "the options do not end with ')'")
    args = rest.rstrip()[:-1]
    if len(args) > 10_000:
        raise _spec_error(spec, "the options are longer than 10,000 characters")
    try:
        call = ast.parse(f"_({args}\n)", mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        reason = getattr(exc, "msg", str(exc))
        raise _spec_error(spec, f"cannot parse the options {args.strip()!r}: {reason}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "_"):
        raise _spec_error(spec, f"cannot parse the options {args.strip()!r}")
    if call.args:
        raise _spec_error(spec, f"{ast.unparse(call.args[0])[:60]!r} has no key (options "
                                "are key=value)")
    options: dict[str, OptionValue] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise _spec_error(spec, "'**' is not an option")
        if keyword.arg in options:
            raise _spec_error(spec, f"option {keyword.arg!r} is given twice")
        options[keyword.arg] = _option_value(spec, keyword.arg, keyword.value)
    return name, options


def split_policies(text: str) -> list[str]:
    """Split a comma-separated policy list at the commas outside parentheses and quotes:
    ``"lru,2q(a=1, b='x,y')"`` -> ``["lru", "2q(a=1, b='x,y')"]``. Blank items are
    dropped. Raises :class:`~tiercache.errors.PolicyError` for unbalanced parentheses
    or an unclosed quote. O(len(text)); pure, thread-safe."""
    items: list[str] = []
    depth, quote, begin = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise PolicyError(f"policy list {text!r}: ')' at character {i + 1} closes "
                                  "nothing")
        elif ch == "," and depth == 0:
            items.append(text[begin:i])
            begin = i + 1
    if quote or depth:
        raise PolicyError(f"policy list {text!r}: "
                          + ("a quote is not closed" if quote else "a '(' is not closed"))
    items.append(text[begin:])
    return [item.strip() for item in items if item.strip()]


def load_policy(spec: PolicySpec) -> tuple[str, type[Policy]]:
    """``(label, class)`` for a policy name, ``"module:Class"`` spec or class.

    The label is the spec as given, options included (``"2q(a_in_size_ratio=0.3)"``;
    see :func:`parse_policy_spec`), or the class's ``name``. Raises
    :class:`~tiercache.errors.PolicyError` naming the spec when it cannot be
    loaded.
    """
    if isinstance(spec, type):
        if not issubclass(spec, Policy):
            raise PolicyError(f"{spec!r} is not a subclass of tiercache.policies.Policy")
        return spec.name or spec.__name__, spec
    name, _ = parse_policy_spec(spec)
    try:
        return spec.strip(), get_policy_class(name)
    except (LookupError, ImportError, TypeError, ValueError) as exc:
        # get_policy_class names the spec and adds the PYTHONPATH hint for a missing module
        raise PolicyError(str(exc)) from None


def make_policy(cls: type[Policy], capacity: int,
                future: Sequence[Any] | npt.NDArray[Any] | None = None,
                **options: Any) -> Policy:
    """Construct ``cls(capacity, **options)``, adding ``future=`` when the class declares
    :attr:`~tiercache.policies.Policy.needs_future` (offline policies such as OPT get the
    trace's key sequence)."""
    if cls.needs_future:
        if future is None:
            raise SimulationError(f"{cls.__name__} needs the future (future=): it is an "
                                  "offline policy and can only replay a whole trace")
        options["future"] = future
    try:
        return cls(capacity, **options)
    except TypeError as exc:
        raise PolicyError(f"cannot construct {cls.__name__}({capacity}): {exc}") from None
