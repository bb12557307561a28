"""The two Kaggle competitions this package serves: their slugs, run-time limits and data folders.

Kaggle mounts a competition's data at ``/kaggle/input/<slug>`` (newer images also at
``/kaggle/input/competitions/<slug>``), and sets ``KAGGLE_IS_COMPETITION_RERUN`` in the hidden rerun
that scores a submission; interactive sessions and commit runs (``KAGGLE_KERNEL_RUN_TYPE``
Interactive / Batch) run without it.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"


@dataclasses.dataclass(frozen=True)
class Competition:
    task: str  # wsdm | lmsys (config.Task)
    slug: str
    minutes: float  # the notebook's run-time limit on Kaggle (the hidden rerun included)


COMPETITIONS = {
    "wsdm": Competition("wsdm", "wsdm-cup-multilingual-chatbot-arena", 720.0),
    "lmsys": Competition("lmsys", "lmsys-chatbot-arena", 540.0),
}


def competition_folders(input_root: Path, competition: Competition) -> list[Path]:
    """The folders under ``input_root`` where Kaggle mounts ``competition``'s data (those present)."""
    return [f for f in (input_root / competition.slug, input_root / "competitions" / competition.slug) if f.is_dir()]


def attached_competitions(input_root: Path) -> list[Competition]:
    """The competitions whose data folder is attached under ``input_root``."""
    return [c for c in COMPETITIONS.values() if competition_folders(input_root, c)]


def is_competition_rerun() -> bool:
    """True inside Kaggle's hidden rerun that scores a submission (``KAGGLE_IS_COMPETITION_RERUN`` set)."""
    return os.environ.get(RERUN_ENV, "").strip().lower() not in ("", "0", "false", "no")
