"""Shared fixtures for the data tests: the Flan-8 folder and tiny files in the real formats."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# The benchmark lies beside the repository (never copied into it); FEDOA_FLAN8 overrides.
FLAN8 = Path(os.environ.get("FEDOA_FLAN8", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flan8"))

# A few lines per domain in the real GroundTruth format: id <TAB> mean score <TAB> text, CRLF.
VADER_LINES = {
    "movieReviewSnippets": [
        ("1", "2.26666666667", "A splendid, moving film."),
        ("2", "-0.6", "Effective but too tepid biopic"),
        ("3", "0", "It is a film."),  # neutral: dropped
        ("4", "1.5", "A splendid, moving film."),  # duplicate text: dropped
        ("5", "1.36", "M\u00fcnch's genuine insight makes it forgivable."),
        ("6", "-2.1", "Dull and long."),
    ],
    "tweets": [
        ("1", "2.726315789", "So lucky."), ("2", "-1.2", "Ugh, Monday."), ("3", "0.5", "ok"),
    ],
    "amazonReviewSnippets": [("1_1", "-0.9", "no picture."), ("1_2", "0.15", "works fine.")],
    "nytEditorialSnippets": [("1_1", "0.4", "A holiday treat."), ("1_2", "-1.5", "A grim budget.")],
}


def write_ground_truth(folder: Path, name: str, rows: list[tuple[str, str, str]],
                       encoding: str = "latin-1") -> Path:
    path = folder / f"{name}_GroundTruth.txt"
    path.write_bytes("".join(f"{a}\t{b}\t{c}\r\n" for a, b, c in rows).encode(encoding))
    return path


@pytest.fixture
def write_gt():
    """``write_gt(folder, name, rows, encoding)`` writes one GroundTruth file."""
    return write_ground_truth


@pytest.fixture
def flan8() -> Path:
    assert FLAN8.is_dir(), f"Flan-8 benchmark not found at {FLAN8} (set FEDOA_FLAN8)"
    return FLAN8


@pytest.fixture
def vader_root(tmp_path: Path) -> Path:
    """A folder of the four GroundTruth files (movie in UTF-8 as in the archive, others latin-1)."""
    folder = tmp_path / "vader"
    folder.mkdir()
    for name, rows in VADER_LINES.items():
        write_ground_truth(folder, name, rows, "utf-8" if name.startswith("movie") else "latin-1")
    return folder
