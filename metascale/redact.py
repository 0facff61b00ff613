"""Secret VALUES metascale has seen, and ``redact(text)`` that replaces them with ``***`` wherever text leaves it.

Diffs mask by key (``config.mask_secrets``). That cannot cover text metascale does not parse: a service's journal,
a command's stderr tail, an exception from a library. So every config text metascale reads is also scanned for the
values of secret-holding keys (``password``, ``secret``, ``token``, ``key``, ``credential``, ``auth_string``, in any
table), and those values are redacted from every exception message (``errors.MetaScaleError``), log record
(``install_log_redaction``), artifact, pause form, flow result and CLI line. Process-wide, thread-safe, values are
kept in memory only and never logged. Plain Python: no metascale imports (``errors`` imports this module).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "***"
MIN_SECRET_LEN = 6  # shorter values ("root", "xxx") are masked in diffs by key but would garble ordinary words here

SECRET_KEY_WORDS = ("password", "secret", "token", "key", "credential", "auth_string")
_KEY = r"(?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*')"
# `key = value` anywhere on a line: at its start (dotted and quoted keys too) or inside an inline table
_PAIR_RE = re.compile(
    r"(?P<key>" + _KEY + r"(?:\s*\.\s*" + _KEY + r")*)\s*=\s*"
    r"(?P<value>\"\"\"|'''|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|\[[^\]\n]*\]?|[^,}\s#]+)")
_STRING_RE = re.compile(r"\"((?:[^\"\\\n]|\\.)*)\"|'([^'\n]*)'")

_lock = threading.Lock()
_values: set[str] = set()


def is_secret_key(key: str) -> bool:
    """Whether a (possibly dotted or quoted) TOML key names a secret: its last part contains a secret word."""
    last = key.strip().rsplit(".", 1)[-1].strip().strip("\"'")
    return any(word in last.lower() for word in SECRET_KEY_WORDS)


def secret_values(text: str) -> set[str]:
    """The values of secret-holding keys in TOML-like ``text`` (strings, strings in arrays, multi-line strings).

    Line-based, so it works on invalid TOML and on fragments. Values shorter than MIN_SECRET_LEN are left out.
    """
    found: set[str] = set()
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        stripped = line.lstrip()
        if stripped.startswith("#"):
            stripped = stripped.lstrip("#").lstrip()  # a commented-out secret is still a secret
        for match in _PAIR_RE.finditer(stripped):
            if not is_secret_key(match.group("key")):
                continue
            value = match.group("value")
            if value in ('"""', "'''"):  # multi-line string: up to the closing quotes
                rest = stripped[match.end():]
                body: list[str] = []
                while value not in rest:
                    body.append(rest)
                    if index >= len(lines):
                        break
                    rest = lines[index]
                    index += 1
                body.append(rest.split(value, 1)[0])
                found.update(part.strip() for part in body)
                found.add("\n".join(body).strip())
                continue
            if value.startswith("[") and not value.rstrip().endswith("]"):  # a multi-line array
                chunk = [value]
                while index < len(lines) and "]" not in lines[index - 1].split("#", 1)[0]:
                    chunk.append(lines[index])
                    index += 1
                value = "\n".join(chunk)
            strings = [a or b for a, b in _STRING_RE.findall(value)]
            found.update(strings)  # secrets are strings; true / false / numbers are not
    return {v for v in found if len(v) >= MIN_SECRET_LEN}


def register_secrets(values: Iterable[str]) -> None:
    """Remember ``values`` (each at least MIN_SECRET_LEN long) so ``redact`` hides them from now on."""
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LEN}
    if new:
        with _lock:
            _values.update(new)


def register_from_config(text: str) -> str:
    """Remember the secret values in config ``text``; return ``text`` (so a reader can wrap its return value)."""
    register_secrets(secret_values(text))
    return text


def forget_all() -> None:
    """Forget every remembered value (tests)."""
    with _lock:
        _values.clear()


def redact(text: str) -> str:
    """``text`` with every remembered secret value replaced by ``***`` (longest first)."""
    if not text or not _values:
        return text
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_any(value: Any) -> Any:
    """``redact`` applied to a str, or to the strings inside a list/tuple/dict (other values unchanged)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_any(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_any(v) for v in value)
    if isinstance(value, dict):
        return {k: redact_any(v) for k, v in value.items()}
    return value


class RedactingStream:
    """A text stream that redacts what is written to it (the CLI wraps stdout and stderr in it)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_std_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in RedactingStream (once). Idempotent."""
    import sys

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


_installed = False


def install_log_redaction() -> None:
    """Make every log record of this process carry redacted text (message and formatted traceback). Idempotent.

    Done with the record factory, so it covers every logger and handler (Prefect's API log handler included)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _values:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        return record

    logging.setLogRecordFactory(factory)


__all__ = [
    "MIN_SECRET_LEN",
    "RedactingStream",
    "redact_std_streams",
    "REDACTED",
    "forget_all",
    "install_log_redaction",
    "is_secret_key",
    "redact",
    "redact_any",
    "register_from_config",
    "register_secrets",
    "secret_values",
]
