"""Expected failures of the `gpuscope` commands: one line of advice and an
exit code (2 bad input, 77 missing privileges, 1 otherwise). One class for
every command, the sidecar's included, so main() catches them all."""

from __future__ import annotations

EXIT_USAGE, EXIT_FAILED, EXIT_PRIVILEGE = 2, 1, 77


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def check_privileges() -> None:
    """Refuses early, with the fix, when eBPF and reading other processes will fail."""
    from .doctor import missing_capabilities

    missing = missing_capabilities()
    if missing:
        raise CliError("gpuscope needs root, or the capabilities " + ", ".join(missing) +
                       ": run it with sudo (or grant them, e.g. setcap / securityContext)",
                       EXIT_PRIVILEGE)
