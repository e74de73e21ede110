"""Best-effort removal of secrets from text (reprs in markers, log lines).

A mitigation against accidental leaks, not a security boundary: it knows API keys
(``sk-...``), bearer tokens, password values (``password=...``, ``"password": "..."``,
``passwd``, ``pwd``) and the password in a URL (``scheme://user:secret@host``).
"""

from __future__ import annotations

import re

REDACTED = "<REDACTED>"

_KEY = r"(?:password|passwd|pwd)\w*[\"']?\s*[:=]\s*"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:secret@host: the secret, up to the "@"
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s/:@]*:)[^\s/@]+(?=@)", re.IGNORECASE),
     rf"\1{REDACTED}"),
    # password="...", 'password': '...', "db_password": "..." (escaped quotes honoured)
    (re.compile(rf"({_KEY})([\"'])(?:\\.|(?!\2)[^\\])*\2", re.IGNORECASE), rf"\1\2{REDACTED}\2"),
    # password=secret, pwd: secret (unquoted: up to a space or a separator)
    (re.compile(rf"({_KEY})(?![\"'<])[^\s&;,'\"}}\])]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # Authorization: Bearer <token>
    (re.compile(r"\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE), rf"\1{REDACTED}"),
    # sk-..., sk-proj-..., sk-ant-... API keys
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}"), REDACTED),
)


def redact(text: str) -> str:
    """``text`` with the secrets it recognizably holds replaced by ``<REDACTED>``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
