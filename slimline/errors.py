"""One error hierarchy for the library, the CLI and (later) the HTTP API.

Every error carries a stable ``code`` and a message that says what to fix: the field, the
value that was given and what would be accepted. The CLI prints ``error[code]: message``;
the service maps each class to one HTTP status in one place (``service``), so nothing else
decides status codes.
"""

from __future__ import annotations

from typing import Any


class SlimlineError(Exception):
    """Base of every error slimline raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class InvalidInput(SlimlineError):
    """Input that can never work as given (wrong format, out-of-range value)."""

    code = "invalid_input"
    http_status = 422


class InvalidOption(InvalidInput):
    """A layer option or plan that is malformed or does not fit its layer."""

    code = "invalid_option"


class InvalidBudget(InvalidInput):
    """A budget string that cannot be parsed."""

    code = "invalid_budget"


class InfeasibleBudget(InvalidInput):
    """A well-formed budget below the smallest size slimline can reach for this model."""

    code = "infeasible_budget"


class InvalidModel(InvalidInput):
    """An unknown zoo name, a bad config, an unreadable or unsafe model file."""

    code = "invalid_model"


class InvalidData(InvalidInput):
    """A dataset that is missing, unreadable or has the wrong shapes, dtypes or labels."""

    code = "invalid_data"


class InvalidCheckpoint(InvalidInput):
    """A checkpoint file that is not a slimline checkpoint or is corrupt."""

    code = "invalid_checkpoint"


class NotFound(SlimlineError):
    code = "not_found"
    http_status = 404


class Conflict(SlimlineError):
    """A request that clashes with the current state: an illegal job transition (finishing a
    cancelled job), a job held by another worker, a name that is already taken."""

    code = "conflict"
    http_status = 409


class Unavailable(SlimlineError):
    """A dependency (the database, the broker) cannot be reached right now; retrying later
    may work."""

    code = "unavailable"
    http_status = 503
