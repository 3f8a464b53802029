"""The `tidings` command line: run the services, start and watch runs, benchmark."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
