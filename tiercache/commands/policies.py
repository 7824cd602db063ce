"""``tiercache policies``: list the eviction policies available by name."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..policies import available_policies, get_policy_class

    for name in available_policies():
        cls = get_policy_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else ''}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policies", help="list the eviction policies available by name")
    p.set_defaults(func=run)
