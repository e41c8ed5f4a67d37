"""What the commands print: a result as text or JSON, a failure as one line, progress on a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from google.protobuf.json_format import MessageToDict


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        # sys.stderr is looked up per bar, not at import: it may be replaced after import.
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._last = -1

    def advance(self, count: int) -> None:
        self.done += count
        percent = min(100, self.done * 100 // self.total)
        if self.enabled and percent != self._last:
            self._last = percent
            bar = "#" * (percent // 4)
            self.stream.write(f"\r{self.label:<28} [{bar:<25}] {percent:3d}% {self.done / 1e6:8.1f} MB")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def print_result(message: Any, args: argparse.Namespace, text: str) -> None:
    """The service's answer as JSON with ``-o json``, else the one ``text`` a person reads."""
    if args.output == "json":
        print(json.dumps(MessageToDict(message), indent=2))
    else:
        print(text)


def report_failure(message: str, code: str, status: int, as_json: bool) -> int:
    """One line on stderr; with ``-o json``, a JSON object on stdout as well (scripts parse that)."""
    if as_json:
        print(json.dumps({"error": message, "code": code}))
    print(f"wave-grpc: {message}", file=sys.stderr)
    return status
