"""The command line: a thin layer over the services (parse, call a service, print).

``sealer.cli.main`` is the ``sealer`` command (pyproject's console script and
``python -m sealer``). The package's modules:

- ``main``: the main group, the registration of every command group, and where failures
  become exit codes;
- ``common``: what the command modules share (options, checks, output); the only module
  they import from each other;
- ``results``: the result object each command prints with ``--json`` (docs/json.md);
- one module per command group: ``volume`` (enroll, unlock, status, remove), ``boot``,
  ``measured`` (eventlog, predict, reseal, prune, explain), ``policy`` (policy, revoke, key),
  ``recovery``, ``migrate``, ``tpm``.
"""

from sealer.cli.main import main

__all__ = ["main"]
