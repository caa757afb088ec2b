"""Discord-shaped API errors; REST handlers raise these and the server turns them into JSON responses."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error response: HTTP status plus Discord's ``{"message", "code", "errors"}`` body."""

    def __init__(self, status: int, message: str, code: int, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {message} (code {code})")
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            out["errors"] = self.errors
        return out


def not_found(what: str, code: int) -> ApiError:
    return ApiError(404, f"Unknown {what}", code)


def invalid_form(field: str, error_code: str, message: str) -> ApiError:
    """50035 Invalid Form Body with one field error, as Discord nests it."""
    return ApiError(400, "Invalid Form Body", 50035, {field: {"_errors": [{"code": error_code, "message": message}]}})


UNKNOWN_ROUTE = 10000
UNKNOWN_APPLICATION = 10002
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_USER = 10013
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
MISSING_ACCESS = 50001
CANNOT_MESSAGE_USER = 50007
EMPTY_MESSAGE = 50006
ALREADY_ACKNOWLEDGED = 40060
