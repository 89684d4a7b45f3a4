"""The one error hierarchy of firstvalue.

Every error says what was wrong, shows the offending value and says how to fix it.
"""

from __future__ import annotations


class FirstvalueError(Exception):
    """Base of every error firstvalue raises on purpose."""


class ConfigError(FirstvalueError):
    """Raised when a setting, an option or the environment holds a value that cannot work."""


class PlaybookError(FirstvalueError):
    """Raised when a playbook file cannot be read or does not validate.

    `problems` holds every problem found, each with its place in the file.
    """

    def __init__(self, path: str, problems: list[PlaybookProblem]) -> None:
        self.path = path
        # In the order of the file (those without a line last), whichever check found them.
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        lines = [f"{path}: {len(problems)} problem(s)"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class PlaybookProblem:
    """One problem of a playbook file: where it is, what is wrong, how to fix it."""

    def __init__(self, location: str, message: str, fix: str, line: int | None = None) -> None:
        self.location = location
        self.message = message
        self.fix = fix
        self.line = line

    def as_dict(self) -> dict[str, object]:
        return {"location": self.location, "line": self.line, "message": self.message,
                "fix": self.fix}

    def __str__(self) -> str:
        where = self.location or "(top level)"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}. Fix: {self.fix}"


class StoreError(FirstvalueError):
    """Raised when the database cannot be opened or migrated."""


class UnknownAccount(FirstvalueError):
    """Raised when an account id is asked for that the store does not hold."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(
            f"unknown account {account_id!r}; list the known ones with `firstvalue accounts`"
        )


class ImportFileError(FirstvalueError):
    """Raised when a file to import cannot be read at all (missing, unknown format)."""


class AuthError(FirstvalueError):
    """Raised when a write key or API token is missing or unknown."""


class LoginBusy(FirstvalueError):
    """Raised when a login's password could not be checked because other logins kept the
    password check busy for longer than a login waits (see `web.auth.log_in`)."""
