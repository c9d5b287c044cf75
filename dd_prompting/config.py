"""One configuration engine for every command: typed dataclasses, config files and flags.

(Being filled in: see the foundation issue. For now it holds the error type every config raises.)
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field or the file."""
