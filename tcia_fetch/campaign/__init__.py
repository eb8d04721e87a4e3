"""The reliability and security campaign of tcia-fetch (reliability.md §3 and §5).

``python -m tcia_fetch.campaign [--full] [--kills N] [--hostile N] [--fuzz-examples N] [--json FILE]``
runs every part against the fake server and prints the figures: faults injected and survived
per class, SIGKILLs and resumes, hostile inputs tried and rejected, fuzzing examples, secret
leaks, and data lost. Every data-lost figure must be 0; the command exits non-zero otherwise.

Modules: :mod:`~tcia_fetch.campaign.oracle` (ground-truth judge), :mod:`~.faults` (fault
matrix), :mod:`~.crash` (SIGKILL loop), :mod:`~.local` (disk full, read-only, shared
destination), :mod:`~.hostile` (hostile archives), :mod:`~.fuzz` (parser fuzzing),
:mod:`~.canary` (canary sweep), :mod:`~.report` (figures). It is a development tool: it
needs the test dependencies (hypothesis) and, for hostile archives, a source checkout.
"""
