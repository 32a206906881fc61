"""Errors meant for the user: one line that names the file and what is wrong."""

from __future__ import annotations


class VeloxSegError(Exception):
    """Base class of veloxseg's user-facing errors; the CLI prints it as one line and exits 1."""


class InputError(VeloxSegError, ValueError):
    """A bad input file or folder (missing, unreadable, wrong shape, geometry or values)."""
