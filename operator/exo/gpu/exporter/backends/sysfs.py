"""Reading sysfs and procfs files, and nothing else: no parsing, no policy.

The DRM backend reads a tree rooted at ``--sysfs-root`` (``/sys`` on a node, the host's ``/sys``
mounted read-only in the chart, a recorded tree in tests) and ``--procfs-root``. Every read goes
through :class:`FileTree`, which turns the ways a read fails into three exceptions the backend
can act on, each naming the file:

* :class:`Missing`: the file does not exist. For an optional field that means "the driver does
  not expose it" (the field is absent); for a card's own directory, that the card is gone.
* :class:`Unreadable`: it exists but cannot be read (permissions, an I/O error from the driver,
  bytes that are not text).
* the parsers in :mod:`~exo.gpu.exporter.backends.drm_parse` raise ``ParseError`` for text that
  does not mean what the file should hold (garbled, truncated, empty).

sysfs attributes are at most a page long; reads are capped at :data:`MAX_BYTES` so that a file
that is not what it claims cannot make the exporter read without end. Trailing NUL bytes (some
recorded trees pad files to a page) and surrounding whitespace are stripped.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BYTES = 64 * 1024


class FileError(Exception):
    """A file could not be read; ``path`` is relative to the tree's root."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Missing(FileError):
    """The file (or a directory on its path) does not exist."""


class Unreadable(FileError):
    """The file exists but reading it failed."""


class FileTree:
    """Read-only access to the files under ``root`` by relative path (``class/drm/card0``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def is_dir(self, rel: str) -> bool:
        return self.path(rel).is_dir()

    def text(self, rel: str) -> str:
        """The file's text, stripped; :class:`Missing` or :class:`Unreadable` on failure."""
        try:
            with open(self.path(rel), "rb") as handle:
                raw = handle.read(MAX_BYTES)
        except FileNotFoundError:
            raise Missing(rel, "no such file") from None
        except NotADirectoryError:
            raise Missing(rel, "a directory on the path is a file") from None
        except IsADirectoryError:
            raise Unreadable(rel, "is a directory, not a file") from None
        except OSError as exc:
            raise Unreadable(rel, exc.strerror or str(exc)) from None
        try:
            return raw.rstrip(b"\0").decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise Unreadable(rel, f"not text ({exc.reason} at byte {exc.start})") from None

    def optional_text(self, rel: str) -> str | None:
        """The file's text, or None when it does not exist (the driver does not expose it)."""
        try:
            return self.text(rel)
        except Missing:
            return None

    def entries(self, rel: str) -> list[str]:
        """Names in a directory, sorted; empty when it does not exist."""
        try:
            return sorted(os.listdir(self.path(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise Unreadable(rel, exc.strerror or str(exc)) from None

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (``device/driver`` -> ``amdgpu``)."""
        try:
            return os.path.basename(os.readlink(self.path(rel)))
        except OSError:
            return None
