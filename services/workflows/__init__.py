"""The shipped workflows. Importing this package registers them (see tidings.sdk)."""

from __future__ import annotations

from . import chat, monty, prompt_chain, research

__all__ = ["chat", "monty", "prompt_chain", "research"]
