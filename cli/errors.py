"""The CLI edge: engine errors become one line on stderr and the documented exit code."""
from __future__ import annotations

import sys
from collections.abc import Callable


def fail(message: str, code: int = 125) -> int:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return code


def run_guarded(fn: Callable[[], int | None]) -> int:
    from pinnace.errors import PinnaceError
    try:
        return fn() or 0
    except PinnaceError as exc:
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # An unexpected filesystem error still gets one line, never a traceback.
        return fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug must still be one line, exit 125
        import logging
        import os
        if os.environ.get("PINNACE_DEBUG"):
            raise
        logging.getLogger("pinnace").debug("internal error", exc_info=True)
        return fail(f"internal error: {type(exc).__name__}: {exc} (PINNACE_DEBUG=1 shows the traceback)")


def require_names(positional: list[str], what: str = "container") -> list[str]:
    from pinnace.errors import InvalidArgument
    if not positional:
        raise InvalidArgument(f"requires at least 1 argument: the {what}")
    return positional


def each_name(positional: list[str], fn) -> int:  # noqa: ANN001
    """Apply fn to each name; report failures like Docker (all of them, exit with the last one's code)."""
    from pinnace.errors import PinnaceError
    code = 0
    for name in require_names(positional):
        try:
            out = fn(name)
            if out is not None:
                print(out)
        except PinnaceError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            code = exc.exit_code
    return code
