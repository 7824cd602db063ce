"""Subcommands of the ``tiercache`` command, one module each.

Each module defines ``register(subparsers)``, which adds its parser and sets
``func`` (``args -> exit status``). :data:`COMMAND_MODULES` lists them in
the order ``--help`` shows; adding a command is adding a module here.
Heavy imports (tensorflow, matplotlib) belong inside the command's function.
"""

from __future__ import annotations

COMMAND_MODULES: tuple[str, ...] = (
    "tiercache.commands.init",
    "tiercache.commands.stats",
    "tiercache.commands.policies",
    "tiercache.commands.verify",
    "tiercache.commands.simulate",
    "tiercache.commands.import_model",
    "tiercache.commands.generate",
)
