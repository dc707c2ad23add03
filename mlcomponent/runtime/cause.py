"""Say why the user's code failed in one line, and show only the user's own frames.

A traceback from the worker crosses the pipe as text, so frames are read back from the
text: a frame is the user's when its file is under ``pythonPath`` (or, without one, not
in mlcomponent, the standard library or an installed package).
"""

from __future__ import annotations

import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')
_PACKAGE = str(Path(__file__).resolve().parent.parent)
_LIBRARIES = tuple({sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str
    code: str

    def text(self) -> str:
        return f'  File "{self.file}", line {self.line}, in {self.function}' + (f"\n    {self.code}" if self.code else "")


def frames_of(traceback_text: str) -> list[Frame]:
    """The frames of a formatted traceback (the last exception's, when exceptions are chained)."""
    frames: list[Frame] = []
    lines = traceback_text.splitlines()
    for index, text in enumerate(lines):
        if text.startswith("Traceback (most recent call last)"):
            frames = []  # a chained exception: the last traceback is the one that was raised
            continue
        match = _FRAME.match(text)
        if match:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            code = following.strip() if following.startswith("    ") and not _FRAME.match(following) else ""
            frames.append(Frame(match["file"], int(match["line"]), match["function"], code))
    return frames


def is_user_file(file: str, root: str | None = None) -> bool:
    if file.startswith("<"):
        return False  # <frozen importlib._bootstrap>, <string>
    if root is not None:
        return _under(file, root)
    return not _under(file, _PACKAGE) and not any(_under(file, library) for library in _LIBRARIES)


def _under(file: str, folder: str) -> bool:
    try:
        return Path(file).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


def user_frames(traceback_text: str, root: str | None = None) -> list[Frame]:
    return [frame for frame in frames_of(traceback_text) if is_user_file(frame.file, root)]


def short_path(file: str, root: str | None = None) -> str:
    """The file as the user knows it: relative to pythonPath when it is under it, else its name."""
    if root is not None:
        try:
            return str(Path(file).resolve().relative_to(Path(root).resolve()))
        except (OSError, ValueError):
            pass
    return Path(file).name


def location(traceback_text: str, root: str | None = None) -> str | None:
    """``predict.py, line 12`` of the last of the user's frames, or None when none is theirs."""
    frames = user_frames(traceback_text, root)
    if not frames:
        return None
    last = frames[-1]
    return f"{short_path(last.file, root)}, line {last.line}"


def user_traceback(traceback_text: str, root: str | None = None) -> str:
    """The traceback cut to the user's frames (all of it when none is theirs) and the exception line."""
    frames = user_frames(traceback_text, root)
    lines = traceback_text.rstrip().splitlines()
    if not frames:
        return "\n".join(lines)
    last = lines[-1] if lines else ""
    return "\n".join(["Traceback (the module's own frames):", *(frame.text() for frame in frames), last])
