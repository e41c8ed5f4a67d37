"""The one type every command family adds its subparser to."""

from __future__ import annotations

import argparse
from typing import TypeAlias

# What build_parser's add_subparsers returns (a private argparse class, hence the string).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
