"""The one exception type for errors a user can cause, and the redaction of secrets from what is shown."""

from __future__ import annotations

import re

# userinfo in a URL (scheme://user:secret@host) and query parameters that carry credentials
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_TOKEN_QUERY = re.compile(
    r"(?P<key>[?&;](?:token|access_token|api_key|apikey|key|sig|signature|password|passwd|secret|auth)=)[^&#\s'\"]+",
    re.IGNORECASE,
)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def redact(text: object) -> str:
    """``text`` as a string with URL userinfo, credential query values and Hugging Face tokens masked.

    Every message the zoo prints or stores that may contain a URL goes through this.

    Example:
        >>> redact("http://user:secret@host:9/api?token=abc&x=1")
        'http://***@host:9/api?token=***&x=1'
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))
    text = _TOKEN_QUERY.sub(lambda m: f"{m['key']}***", text)
    return _HF_TOKEN.sub("hf_***", text)


class ZooError(Exception):
    """A bad file, config, checkpoint or name, with a message that says what and where."""
