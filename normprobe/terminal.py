"""Text for the terminal: untrusted strings made safe to print, and one-line warnings.

A file name may hold escape sequences (``ESC ]...``) that rewrite the terminal, newlines that
forge log lines, bidirectional overrides that reorder what is shown, or bytes that are not
UTF-8 (Python decodes those to lone surrogates, which ``print`` cannot even encode).
:func:`printable` shows each such character as a backslash escape instead.
:func:`command_status` is how every command's ``main`` ends: the error line or the exit status.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from normprobe.errors import NormprobeError

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with control characters, bidi overrides and undecodable bytes as backslash escapes."""
    return _UNSAFE.sub(_escape, str(text))


def warn(message: str) -> None:
    """One line on stderr: something failed that the run does not need (e.g. a cache write)."""
    print(f"normprobe: warning: {printable(message)}", file=sys.stderr, flush=True)


def command_status(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status, for a command's ``main``: a :class:`NormprobeError` becomes one line
    ``PROG: error: ...`` on stderr and status 2, Ctrl-C ``PROG: interrupted`` and 130; any other
    exception is a bug and keeps its traceback."""
    try:
        return body()
    except NormprobeError as err:
        print(f"{prog}: error: {printable(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
