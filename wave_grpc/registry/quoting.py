"""What an upstream said in its error body, fit to quote in ours: short, scrubbed, and for a
registry no ``[[registries]]`` entry lists, at most its error code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

_ERROR_CODE = re.compile(r"^[A-Z_]{1,40}$")


def quoted_error(raw: bytes, *, listed: bool, scrub: Callable[[str], str]) -> str:
    """``' "CODE: message"'`` (or ``' (CODE)'`` for an unlisted registry), or '' when there is nothing to quote.

    An unlisted registry is a host an anonymous caller pointed us at: it may not speak
    through our errors beyond a code of the distribution spec's form.
    """
    text = raw.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
        first = doc["errors"][0]
        code = str(first.get("code", ""))
        if not listed:
            code = code if _ERROR_CODE.match(code) else ""
            return f" ({code})" if code else ""
        text = f"{code}: {first.get('message', '')}".strip(": ")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        if not listed:
            return ""
        text = text.splitlines()[0] if text else ""
        if text.startswith("<"):  # an HTML error page says nothing useful
            text = ""
    text = scrub(text)[:200]
    return f' "{text}"' if text else ""
