"""The record of what ``veloxseg predict`` wrote into an output folder.

``predict`` never replaces a file it did not write. Every output it writes is appended to
``.veloxseg-predict.jsonl`` in the output folder (name and size, one JSON line per file, one
``write`` of an ``O_APPEND`` descriptor, so several ``--num-parts`` processes can share a folder).
A file is "ours" when its name is recorded with its current size: re-running into the same folder
replaces our own outputs, and anything else (ground truth, input images, a user's file) is refused
unless the user passes ``--overwrite``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST_NAME = ".veloxseg-predict.jsonl"


class OutputManifest:
    """Read and append the record of files ``predict`` wrote into ``folder``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME

    def entries(self) -> dict[str, int]:
        """``{file name: size}`` of every recorded output (the latest record of a name wins)."""
        out: dict[str, int] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                out[str(rec["file"])] = int(rec["size"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: ignored, so it proves nothing
        return out

    def owns(self, path: str | os.PathLike, entries: dict[str, int] | None = None) -> bool:
        """True when ``path`` (in this folder) was written by ``predict`` and is unchanged in size since."""
        p = Path(path)
        entries = self.entries() if entries is None else entries
        try:
            return p.parent.resolve() == self.folder.resolve() and entries.get(p.name) == p.stat().st_size
        except OSError:
            return False

    def record(self, path: str | os.PathLike) -> None:
        """Append ``path``'s name and size (one atomic append)."""
        p = Path(path)
        line = (json.dumps({"file": p.name, "size": p.stat().st_size}) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
