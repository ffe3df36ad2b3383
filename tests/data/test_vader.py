import hashlib
import io
import subprocess
import tarfile

import pytest

from fedoa.data import vader
from fedoa.data.vader import DOMAINS, ensure_vader_files, load_vader, parse_ground_truth
from fedoa.errors import DataError, FedoaError


def test_parse_real_format(vader_root):
    rows = parse_ground_truth(vader_root / "movieReviewSnippets_GroundTruth.txt", "movie")
    assert rows[0] == ("1", pytest.approx(2.26666666667), "A splendid, moving film.")
    assert len(rows) == 6
    assert rows[4][2].startswith("M\u00fcnch")  # UTF-8 file decoded as UTF-8, CR stripped


def test_parse_latin1(tmp_path, write_gt):
    path = write_gt(tmp_path, "tweets", [("1", "1.0", "caf\u00e9 \x85 ok")], "latin-1")
    assert parse_ground_truth(path, "tweets") == [("1", 1.0, "caf\u00e9 \x85 ok")]


@pytest.mark.parametrize(
    "line, message",
    [("1\t2.0", "expected 3 tab-separated fields"), ("1\t2\tx\ty", "got 4"),
     ("1\tgood\ttext", "not a number"), ("1\tnan\ttext", "not finite")],
)
def test_parse_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "tweets_GroundTruth.txt"
    path.write_bytes(b"1\t1.0\tfine\r\n\r\n" + line.encode() + b"\r\n")
    with pytest.raises(DataError, match=message) as info:
        parse_ground_truth(path, "tweets")
    assert "tweets_GroundTruth.txt:3" in str(info.value)


def test_labels_zero_and_duplicates(vader_root):
    splits = load_vader(["movie"], test_fraction=0.25, root=vader_root)
    train, test = splits["movie"]
    records = train + test
    assert len(records) == 4  # 6 lines - one neutral - one duplicate
    by_text = {r.instruction.splitlines()[1]: r.output for r in records}
    assert by_text["A splendid, moving film."] == "positive"
    assert by_text["Dull and long."] == "negative"
    assert "It is a film." not in by_text
    r = records[0]
    assert r.options == ("negative", "positive") and r.task == "movie" and r.category == "sentiment"
    assert r.instruction.endswith("OPTIONS:\n- negative\n- positive")


def test_domains_order_and_unknown(vader_root):
    assert list(load_vader(root=vader_root)) == ["movie", "tweets", "amazon", "nyt"]
    assert list(load_vader(["nyt", "movie"], root=vader_root)) == ["movie", "nyt"]
    with pytest.raises(DataError, match="known: movie, tweets, amazon, nyt"):
        load_vader(["imdb"], root=vader_root)


def _many(tmp_path, write_ground_truth, n=200):
    folder = tmp_path / "many"
    folder.mkdir()
    for i, name in enumerate(DOMAINS.values()):
        scores = [(-1) ** k * (k + 1) / 100 for k in range(n + i)]
        rows = [(str(k), str(s), f"{name} sentence {k}") for k, s in enumerate(scores)]
        write_ground_truth(folder, name, rows)
    return folder


def test_split_seeded(tmp_path, write_gt):
    root = _many(tmp_path, write_gt)
    a = load_vader(test_fraction=0.2, seed=0, root=root)
    b = load_vader(test_fraction=0.2, seed=0, root=root)
    c = load_vader(test_fraction=0.2, seed=1, root=root)
    assert a == b
    assert a["movie"][1] != c["movie"][1]
    train, test = a["movie"]
    assert len(test) == 40 and len(train) == 160
    assert not {r.instruction for r in train} & {r.instruction for r in test}
    # A domain's split does not depend on which other domains are loaded.
    assert load_vader(["tweets"], seed=0, root=root)["tweets"] == a["tweets"]


# --------------------------------------------------------------------------- ensure_vader_files


def _fake_sdist(path, domains=DOMAINS):
    """A tar.gz shaped like the real sdist: the GroundTruth files inside a nested archive."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for name in domains.values():
            data = f"1\t1.5\t{name} is fine\r\n2\t-1.0\t{name} is bad\r\n".encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}_GroundTruth.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(vader._INNER_ARCHIVE)
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDOA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "downloads").mkdir(parents=True)
    return tmp_path / "cache"


def test_ensure_extracts_from_cached_sdist(cache, monkeypatch):
    digest = _fake_sdist(cache / "downloads" / vader.SDIST_NAME)
    monkeypatch.setattr(vader, "SDIST_SHA256", digest)
    folder = ensure_vader_files()
    assert folder == cache / "data" / "vader-3.3.2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{n}_GroundTruth.txt" for n in DOMAINS.values())
    assert [p.name for p in folder.parent.iterdir()] == ["vader-3.3.2"]  # no temp leftovers
    assert ensure_vader_files() == folder  # second call: cache hit
    assert len(load_vader(["tweets"])["tweets"][0]) == 1


def test_ensure_hash_mismatch(cache):
    _fake_sdist(cache / "downloads" / vader.SDIST_NAME)
    with pytest.raises(FedoaError, match="sha256 of .*vaderSentiment-3.3.2.tar.gz"):
        ensure_vader_files()
    assert not (cache / "data" / "vader-3.3.2").exists()


def test_ensure_missing_member_leaves_no_cache(cache, monkeypatch):
    digest = _fake_sdist(cache / "downloads" / vader.SDIST_NAME, {"movie": "movieReviewSnippets"})
    monkeypatch.setattr(vader, "SDIST_SHA256", digest)
    with pytest.raises(FedoaError, match="tweets_GroundTruth.txt"):
        ensure_vader_files()
    assert list((cache / "data").iterdir()) == []


def test_ensure_download_failure(cache, monkeypatch):
    (cache / "downloads").rmdir()
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(vader.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(FedoaError, match="vaderSentiment-3.3.2.tar.gz.*No matching"):
        ensure_vader_files()


@pytest.mark.slow
def test_real_vader_download():
    """Downloads the sdist from PyPI once into the default cache (shared with other tests)."""
    splits = load_vader(root=ensure_vader_files())
    sizes = {d: len(tr) + len(te) for d, (tr, te) in splits.items()}
    assert sizes == {"movie": 10566, "tweets": 4196, "amazon": 3600, "nyt": 4884}
    assert {len(te) for te in (te for _, te in splits.values())} == {2113, 839, 720, 977}
