"""The project's text corpus (Moby-Dick, public domain) and its fixed calibration / evaluation split."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

ENV_VAR = "GOLDEN_PTQ_TEXT"
_RELATIVE = os.path.join("shared", "data", "moby-dick.txt")


def default_text_path() -> str:
    """``$GOLDEN_PTQ_TEXT``, else ``shared/data/moby-dick.txt`` beside or inside the checkout / cwd."""
    if os.environ.get(ENV_VAR):
        path = os.environ[ENV_VAR]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"${ENV_VAR} points to {path!r}, which does not exist")
        return path
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates: List[str] = []
    for base in (repo, os.getcwd()):
        candidates += [os.path.join(base, "..", _RELATIVE), os.path.join(base, _RELATIVE)]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise FileNotFoundError(f"text corpus not found; set ${ENV_VAR} to a text file (looked at {candidates})")


def split_text(text: str) -> Tuple[str, str]:
    """(calibration, evaluation): the first half and the last fifth, by characters."""
    return text[: len(text) // 2], text[len(text) - len(text) // 5:]


def validation_text(text: str) -> str:
    """The part between the calibration half and the evaluation fifth (30% of the text): held-out
    data to tune on (e.g. a rollback search) without touching what is reported."""
    return text[len(text) // 2: len(text) - len(text) // 5]


def load_validation(path: Optional[str] = None) -> str:
    with open(path or default_text_path(), encoding="utf-8") as handle:
        return validation_text(handle.read())


def load_splits(path: Optional[str] = None) -> Tuple[str, str]:
    with open(path or default_text_path(), encoding="utf-8") as handle:
        return split_text(handle.read())
