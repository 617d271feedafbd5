import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lsc4rec.config import DataConfig
from lsc4rec.data import build_dataset, read_dataset, sources
from lsc4rec.data.atomic import read_atomic
from lsc4rec.data.dataset import SequenceDataset
from lsc4rec.data.movielens import read_movielens
from lsc4rec.data.p5 import read_p5
from lsc4rec.data.prepared import source_fingerprint
from lsc4rec.errors import DataFormatError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_movielens_reads_ratings_and_titles(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n1,20,3.0,3\n2,10,5.0,1\n")
    # a blank line between two rows (an edited file) is skipped, not the end of the titles
    write(
        tmp_path / "movies.csv", 'movieId,title,genres\n10,"Heat (1995)",Action\n\n20,Up (2009),Animation\n'
    )
    raw = read_movielens(tmp_path)
    assert raw.users.tolist() == ["1", "1", "2"]
    assert raw.times.tolist() == [5.0, 3.0, 1.0]
    assert raw.titles == {"10": "Heat (1995)", "20": "Up (2009)"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("user,item,rating,time\n1,2,3,4\n", "header must start with userId"),
        ("", r"ratings.csv:1: header must start with userId,movieId,rating,timestamp, got nothing\."),
        (
            "userId,movieId,rating,timestamp\n1,abc,3,4\n",
            r"ratings.csv:2: userId and movieId must be non-negative integers",
        ),
        ("userId,movieId,rating,timestamp\n1,2,3,yesterday\n", r":2: timestamp must be a finite number"),
        ("userId,movieId,rating,timestamp\n1,2,3,4\n1,3,3,nan\n", r":3: timestamp must be a finite number"),
        ("userId,movieId,rating,timestamp\n1,2\n", r":2: expected 4 columns"),
        # a field too many
        ("userId,movieId,rating,timestamp\n1,2,3,4,5\n", r":2: expected 4 columns, got 5"),
        ("userId,movieId,rating,timestamp\n1,2,good,4\n", r":2: rating must be a finite number, got 'good'"),
        ("userId,movieId,rating,timestamp\n", "no ratings"),
    ],
)
def test_movielens_bad_files_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    write(tmp_path / "ratings.csv", text)
    with pytest.raises(DataFormatError, match=match):
        read_movielens(tmp_path)


@pytest.mark.parametrize(
    ("movies", "match"),
    [
        ("movieId,title\n10,Heat\n10,Up\n", r"movies\.csv:3: item 10 has a row already \(line 2\)"),
        # one id, written twice
        ("movieId,title\n10,Heat\n010,Up\n", r"movies\.csv:3: item 10 has a row already"),
        ("movieId,title\n10\n", r"movies\.csv:2: expected 2 fields, got 1"),
        ("movieId,title\nten,Heat\n", r"movies\.csv:2: movieId must be a non-negative integer, got 'ten'"),
    ],
)
def test_movielens_titles_are_never_silently_replaced_or_dropped(
    tmp_path: Path, movies: str, match: str
) -> None:
    """Titles go into the LLM's prompts with ``llm.template = titles``: a movie given twice has no one title."""
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n")
    write(tmp_path / "movies.csv", movies)
    with pytest.raises(DataFormatError, match=match):
        read_movielens(tmp_path)


def test_movielens_missing_file_says_where(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"ratings\.csv: file not found"):
        read_movielens(tmp_path)


def test_p5_reads_order_as_time(tmp_path: Path) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 6 7\n2 6 5\n")
    raw = read_p5(tmp_path)
    assert raw.items.tolist() == ["5", "6", "7", "6", "5"]
    assert raw.times.tolist() == [0, 1, 2, 0, 1]


def test_p5_rejects_non_numeric_and_lone_user(tmp_path: Path) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 x\n")
    with pytest.raises(
        DataFormatError, match=r"sequential_data.txt:1: ids must be non-negative integers, got 'x'"
    ):
        read_p5(tmp_path)
    write(tmp_path / "sequential_data.txt", "1 5\n2\n")
    with pytest.raises(DataFormatError, match=r":2: a line must hold a user id and at least one item"):
        read_p5(tmp_path)
    write(tmp_path / "sequential_data.txt", "1 5 6\n2 5 6\n1 7 8\n")
    with pytest.raises(DataFormatError, match=r":3: user 1 already has a line \(line 1\)"):
        read_p5(tmp_path)
    write(tmp_path / "sequential_data.txt", "1 2 3 \u00b2\n")  # a superscript two passes str.isdigit
    with pytest.raises(DataFormatError, match="ids must be non-negative integers, got '\u00b2'"):
        read_p5(tmp_path)


def test_an_id_is_one_id_however_it_is_written(tmp_path: Path) -> None:
    """A zero-padded export must not split a movie, a user or a P5 user's one line into two."""
    write(tmp_path / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\n1,007,4,1\n01,8,4,2\n2,7,3,3\n")
    write(tmp_path / "ml" / "movies.csv", "movieId,title\n07,Seven (1995)\n")
    raw = read_movielens(tmp_path / "ml")
    assert raw.users.tolist() == ["1", "1", "2"] and raw.items.tolist() == ["7", "8", "7"]
    assert raw.titles == {"7": "Seven (1995)"}
    write(tmp_path / "p5" / "sequential_data.txt", "1 5 6\n01 7 8\n")
    with pytest.raises(DataFormatError, match=r":2: user 1 already has a line \(line 1\)"):
        read_p5(tmp_path / "p5")


def test_an_item_given_twice_is_named_at_its_second_line(tmp_path: Path) -> None:
    """A re-appended row would make a user's newest item both targets and put it in its own history.

    Consumed items are never listed, so such a target is a sure miss: every reader refuses it.
    """
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,5,4,1\n1,6,4,2\n1,6,4,2\n")
    with pytest.raises(DataFormatError, match=r"ratings.csv:4: user 1 rated movie 6 already \(line 3\)"):
        read_movielens(tmp_path)
    write(tmp_path / "sequential_data.txt", "1 5 6\n2 5 6 7 6\n")
    with pytest.raises(DataFormatError, match=r"sequential_data.txt:2: user 2 has item 6 already \(line 2\)"):
        read_p5(tmp_path)
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\nu1\ti1\nu2\ti1\nu1\ti1\n")
    with pytest.raises(DataFormatError, match=r"toy.inter:4: user u1 has item i1 already \(line 2\)"):
        read_atomic(tmp_path / "toy.inter")


def test_a_folder_that_cannot_be_listed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\n1,5,4,1\n")

    def refused(self: Path) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(DataFormatError, match=r"ml: cannot be listed \(Permission denied\)"):
        source_fingerprint(DataConfig(dataset=str(tmp_path / "ml")))


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without read permission (root reads anyway, so the refusal is made here) a file is named, not traced back."""
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,5,4,1\n")

    def refused(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(DataFormatError, match=r"ratings.csv: cannot be read \(Permission denied\)"):
        read_movielens(tmp_path)


def test_a_tie_is_broken_by_the_two_ids_alone(tmp_path: Path) -> None:
    """Items 9 and 10 rated in one second come as 9, 10, whatever long id another user's file holds."""
    long_id = "1" * 19  # beyond int64: it once turned every tie in the file to string order ("10" < "9")
    rows = ["1,10,4,5", "1,9,4,5", "1,3,4,1", "2,10,4,6", "2,9,4,6", "2,3,4,1", "3,3,4,1", f"3,{long_id},4,2"]
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    for kcore in (1, 2):  # the long id is kept by one, dropped by the other
        dataset = build_dataset(read_movielens(tmp_path), kcore=kcore, numbering="sequential")
        first = dataset.item_ids[dataset.sequence(0) - 1].tolist()
        assert first[-2:] == ["9", "10"], kcore


def test_ids_beyond_int64_sort_as_strings(tmp_path: Path) -> None:
    write(tmp_path / "sequential_data.txt", "1 99999999999999999999999 5\n2 5 99999999999999999999999\n")
    dataset = build_dataset(read_p5(tmp_path), kcore=1, numbering="sequential")
    assert sorted(dataset.item_ids.tolist()) == ["5", "99999999999999999999999"]


def test_p5_checks_datamaps(tmp_path: Path) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 6\n")
    write(tmp_path / "datamaps.json", '{"id2item": {"5": "A"}}')
    with pytest.raises(DataFormatError, match="id2item lacks 1 item ids"):
        read_p5(tmp_path)
    write(tmp_path / "datamaps.json", "{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        read_p5(tmp_path)
    write(tmp_path / "datamaps.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataFormatError, match="nested too deeply"):
        read_p5(tmp_path)
    for shape in ('["id2item"]', '{"id2item": ["5", "6"]}', '{"item2id": {}}'):  # valid JSON, not P5's shape
        write(tmp_path / "datamaps.json", shape)
        with pytest.raises(DataFormatError, match="must be P5's JSON object with an id2item mapping"):
            read_p5(tmp_path)


@pytest.mark.parametrize(
    ("name", "reader"),
    [("ratings.csv", read_movielens), ("sequential_data.txt", read_p5), ("toy.inter", read_atomic)],
)
def test_a_file_that_is_not_utf8_is_named(tmp_path: Path, name: str, reader) -> None:
    header = {
        "ratings.csv": "userId,movieId,rating,timestamp\n",
        "toy.inter": "user_id:token\titem_id:token\n",
    }
    row = {"ratings.csv": "{u},2,3,4\n", "sequential_data.txt": "{u} 5 6\n", "toy.inter": "u{u}\ti1\n"}[name]
    rows = "".join(row.format(u=u) for u in range(1, 5001))
    # the bad byte lies past the first block read, where a reader only meets it halfway through the file
    (tmp_path / name).write_bytes((header.get(name, "") + rows).encode() + "caf\xe9".encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"{name}: is not UTF-8 text"):
        reader(tmp_path / name if name.endswith(".inter") else tmp_path)


def test_atomic_reads_inter_and_item_titles(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t2\nu1\ti2\t1\n")
    write(tmp_path / "toy.item", "item_id:token\ttitle:token_seq\ni1\tFirst\ni2\tSecond\n")
    raw = read_atomic(tmp_path / "toy.inter")
    assert raw.items.tolist() == ["i1", "i2"]
    assert raw.times.tolist() == [2.0, 1.0]
    assert raw.titles == {"i1": "First", "i2": "Second"}


ONE_ROW = "user_id:token\titem_id:token\nu\ti\n"


@pytest.mark.parametrize(
    ("inter", "item", "match"),
    [
        ("uid:token\titem_id:token\nu\ti\n", None, "user_id:token column"),
        ("user_id:token\titem_id:token\nu\ti\textra\n", None, r"a\.inter:2: expected 2 tab-separated fields"),
        (ONE_ROW + " \ti\n", None, r"a\.inter:3: user_id and item_id must not be empty"),
        (
            "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tinf\n",
            None,
            r"a\.inter:2: timestamp must be a finite number, got 'inf'",
        ),
        # titles go into the LLM's prompts: none is silently replaced or dropped
        (
            ONE_ROW,
            "item_id:token\ttitle:token_seq\ni\tFirst\ni\tAgain\n",
            r"a\.item:3: item i has a row already",
        ),
        (ONE_ROW, "item_id:token\ttitle:token_seq\ni\n", r"a\.item:2: expected 2 fields, got 1"),
    ],
)
def test_atomic_bad_files_name_file_and_line(
    tmp_path: Path, inter: str, item: str | None, match: str
) -> None:
    write(tmp_path / "a.inter", inter)
    if item is not None:
        write(tmp_path / "a.item", item)
    with pytest.raises(DataFormatError, match=match):
        read_atomic(tmp_path / "a.inter")


def test_read_dataset_dispatches_paths_and_rejects_unknown(tmp_path: Path) -> None:
    write(tmp_path / "p5" / "sequential_data.txt", "1 5 6\n")
    assert len(read_dataset(str(tmp_path / "p5"))) == 2
    with pytest.raises(DataFormatError, match="neither a known dataset"):
        read_dataset(str(tmp_path / "nothing"))
    with pytest.raises(DataFormatError, match="dataset 'beauty' not found"):
        read_dataset("beauty", tmp_path)


def test_build_dataset_kcore_time_ties_and_numbering(tmp_path: Path) -> None:
    # user 1 rates items 30 and 20 at the same time: ties are broken by item id (20 before 30).
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"1,{i},4,{t}" for i, t in [(30, 5), (20, 5), (10, 1)]]
    lines += [f"2,{i},4,{t}" for i, t in [(10, 1), (20, 2), (30, 3)]]
    lines += ["3,99,4,1"]  # item 99 and user 3 fall out of the 2-core
    write(tmp_path / "ratings.csv", "\n".join(lines) + "\n")
    raw = read_movielens(tmp_path)
    seq = build_dataset(raw, kcore=2, numbering="sequential")
    assert seq.num_users == 2 and seq.num_items == 3
    assert seq.item_ids.tolist() == ["10", "20", "30"]
    assert seq.sequence(0).tolist() == [1, 2, 3]
    shuffled = build_dataset(raw, kcore=2, numbering="random", seed=3)
    decoded = [shuffled.item_ids[i - 1] for i in shuffled.sequence(0)]
    assert decoded == ["10", "20", "30"]  # numbering changes ids, never order
    with pytest.raises(
        DataFormatError, match=r"no interactions survive 5-core.*\(--kcore, or --set data.kcore=N\)"
    ):
        build_dataset(raw, kcore=5)


def test_prepared_dataset_roundtrip(tmp_path: Path) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 6 7\n2 6 5 7\n")
    seq = build_dataset(read_p5(tmp_path), kcore=1, numbering="random", seed=1)
    loaded = type(seq).load(seq.save(tmp_path / "out" / "d.npz"))
    assert np.array_equal(loaded.items, seq.items) and loaded.meta == seq.meta
    assert loaded.stats()["interactions"] == 6
    with pytest.raises(
        DataFormatError, match=r"d\.npz: cannot be written: a file stands where its folder must"
    ):
        seq.save(tmp_path / "out" / "d.npz" / "d.npz")  # below a file
    good = (tmp_path / "out" / "d.npz").read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d.npz"]  # no partial file left beside it
    damaged = {"text.npz": b"garbage", "empty.npz": b"", "truncated.npz": good[: len(good) // 2]}
    for name, content in damaged.items():  # each used to escape as its own exception kind
        (tmp_path / name).write_bytes(content)
        with pytest.raises(
            DataFormatError,
            match=r"is not a prepared dataset .*; expected the \.npz file that `lsc4rec data prepare",
        ):
            type(seq).load(tmp_path / name)
    with pytest.raises(DataFormatError, match=r"expected the \.npz file that `lsc4rec data prepare"):
        type(seq).load("ml-latest-small")  # a dataset name where the prepared file's path belongs


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"items": np.array([1, 2, 99, 1, 2, 3])}, r"item ids must lie in 1\.\.3, got 1 \.\. 99"),
        ({"items": np.array([1, 2, 0, 1, 2, 3])}, r"item ids must lie in 1\.\.3, got 0"),  # padding inside
        ({"offsets": np.array([0, 3])}, r"offsets must rise from 0 to the 6 items"),  # the last user cut off
        ({"offsets": np.array([0, 3, 9])}, r"offsets must rise from 0 to the 6 items"),
        (
            {"offsets": np.array([0]), "user_ids": np.array([])},
            r"it must hold one item array and at least one user's offsets",
        ),
        ({"meta": np.array('["a list"]')}, r"its meta must be a JSON object, got list"),
    ],
)
def test_a_prepared_dataset_that_breaks_its_invariants_is_named(
    tmp_path: Path, change: dict, problem: str
) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 6 7\n2 6 5 7\n")
    path = build_dataset(read_p5(tmp_path), kcore=1).save(tmp_path / "d.npz")
    with np.load(path) as arrays:
        np.savez(tmp_path / "bad.npz", **{**dict(arrays), **change})
    with pytest.raises(DataFormatError, match=rf"bad\.npz: is a damaged prepared dataset: {problem}"):
        SequenceDataset.load(tmp_path / "bad.npz")
    np.save(tmp_path / "plain.npy", np.arange(3))
    with pytest.raises(DataFormatError, match=r"plain\.npy: is not a prepared dataset \(it holds one array"):
        SequenceDataset.load(tmp_path / "plain.npy")
    (tmp_path / "ratings.csv").write_text("userId,movieId\n1,2\n")  # a raw file given where the .npz goes
    with pytest.raises(
        DataFormatError, match=r"ratings\.csv: is not a prepared dataset \(it is not an \.npz archive\)"
    ):
        SequenceDataset.load(tmp_path / "ratings.csv")


def test_shared_movielens_has_titles(data_root: Path) -> None:
    seq = build_dataset(read_dataset("ml-latest-small", data_root), kcore=5)
    stats = seq.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (610, 3650, 90274)
    assert (seq.titles != "").all()


def test_missing_movielens_download_failure_says_where_to_put_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lsc4rec.data.sources as sources

    monkeypatch.setattr(sources, "MOVIELENS_URL", "http://127.0.0.1:9/ml-latest-small.zip")  # nothing listens
    with pytest.raises(DataFormatError, match=r"could not be downloaded .* Unzip .* into this folder"):
        read_dataset("ml-latest-small", tmp_path)


def test_data_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lsc4rec.data.sources import data_root

    monkeypatch.setenv("LSC4REC_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("LSC4REC_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "lsc4rec" / "data"


def test_prepared_cache_keeps_data_roots_and_folders_apart(tmp_path: Path) -> None:
    """One named dataset under two data roots, or two folders with one name, never share a cached file."""
    from lsc4rec.config import DataConfig
    from lsc4rec.data.prepared import load_or_prepare, prepared_name

    for root, users in (("a", "1 5 6 7\n2 6 5 7\n"), ("b", "1 5 6\n")):
        write(tmp_path / root / "p5" / "beauty" / "sequential_data.txt", users)
    first, second = (DataConfig(dataset="beauty", data_dir=str(tmp_path / r), kcore=1) for r in "ab")
    assert prepared_name(first, 0) != prepared_name(second, 0)
    assert prepared_name(first, 0).startswith("beauty-") and prepared_name(first, 0).endswith(
        "-k1-random-s0.npz"
    )
    cache = tmp_path / "cache"
    assert load_or_prepare(first, 0, cache).stats()["interactions"] == 6
    assert load_or_prepare(second, 0, cache).stats()["interactions"] == 2  # not the first root's cached file
    same_name = [DataConfig(dataset=str(tmp_path / r / "p5" / "beauty")) for r in "ab"]
    assert prepared_name(same_name[0], 0) != prepared_name(same_name[1], 0)


def test_a_failed_save_leaves_the_earlier_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 6 7\n2 6 5 7\n")
    seq = build_dataset(read_p5(tmp_path), kcore=1)
    saved = seq.save(tmp_path / "out" / "d.npz")
    before = saved.read_bytes()

    def write_half_then_fail(file: Path, **arrays: object) -> None:  # a full disk, or an interrupted run
        Path(file).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", write_half_then_fail)
    with pytest.raises(
        DataFormatError, match=r"cannot be written \(No space left on device\)\. Choose a folder"
    ):
        seq.save(saved)
    assert saved.read_bytes() == before  # readers of the cache still find the earlier, whole file
    assert [p.name for p in saved.parent.iterdir()] == ["d.npz"]


def _serve(monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    """Answer the MovieLens download with ``body``: no test reaches the network."""
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(body))


def _movielens_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n")
        archive.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n10,Heat (1995),Action\n")
        archive.writestr("ml-latest-small/README.txt", "readme\n")
    return buffer.getvalue()


def test_movielens_is_downloaded_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, _movielens_zip())
    raw = read_dataset("ml-latest-small", tmp_path)
    assert len(raw.users) == 1
    assert sorted(p.name for p in (tmp_path / "ml-latest-small").iterdir()) == [
        "README.txt",
        "movies.csv",
        "ratings.csv",
    ]  # and no partial file beside them


def _damaged(archive: bytes) -> bytes:
    """The archive with one byte of ratings.csv's data changed: its directory reads, its CRC check fails."""
    at = archive.index(b"userId")
    return archive[:at] + b"X" + archive[at + 1 :]


@pytest.mark.parametrize("body", [_movielens_zip()[:100], _damaged(_movielens_zip())], ids=["cut", "damaged"])
def test_a_bad_download_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    _serve(monkeypatch, body)
    with pytest.raises(DataFormatError, match="could not be downloaded"):
        read_dataset("ml-latest-small", tmp_path)
    assert not (tmp_path / "ml-latest-small" / "ratings.csv").exists()


def test_a_download_cut_while_writing_leaves_no_ratings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ratings.csv says the download is complete, so it is written last: a failure before it leaves none."""
    _serve(monkeypatch, _movielens_zip())
    written: list[str] = []

    def write_until_ratings(path: Path, write: object) -> None:
        if path.name == "ratings.csv":
            raise OSError(28, "No space left on device")
        written.append(path.name)

    monkeypatch.setattr(sources, "write_atomically", write_until_ratings)
    with pytest.raises(DataFormatError, match="cannot hold the downloaded MovieLens files"):
        read_dataset("ml-latest-small", tmp_path)
    assert sorted(written) == ["README.txt", "movies.csv"]
    assert not (tmp_path / "ml-latest-small" / "ratings.csv").exists()


def test_a_byte_order_mark_is_skipped_and_an_endless_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_bytes(b"\xef\xbb\xbfuserId,movieId,rating,timestamp\n1,10,4.0,5\n")
    assert read_movielens(tmp_path).items.tolist() == ["10"]  # a spreadsheet's BOM is not part of "userId"
    write(tmp_path / "ratings.csv", 'userId,movieId,rating,timestamp\n1,"10' + "x" * 200_000 + "\n")
    with pytest.raises(
        DataFormatError, match=r"ratings\.csv:2: cannot be read as delimited text .*never closed"
    ):
        read_movielens(tmp_path)


def test_a_folder_of_datasets_in_several_formats_is_not_read_by_guess(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n")
    write(tmp_path / "sequential_data.txt", "1 5 6\n")
    with pytest.raises(DataFormatError, match=r"more than one format \(sequential_data\.txt, ratings\.csv\)"):
        read_dataset(str(tmp_path))
    assert len(read_dataset(str(tmp_path / "ratings.csv"))) == 1  # the file named is read


def test_a_folder_of_several_inter_files_is_not_read_by_guess(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write(tmp_path / f"ds.{split}.inter", "user_id:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(DataFormatError, match=r"holds several \.inter files \(ds\.test\.inter, ds\.train"):
        read_atomic(tmp_path)


def test_a_cached_preparation_of_raw_files_since_edited_is_made_again(tmp_path: Path) -> None:
    from lsc4rec.config import DataConfig
    from lsc4rec.data.prepared import load_or_prepare, prepared_name

    raw = write(tmp_path / "shop" / "sequential_data.txt", "1 5 6 7\n2 6 5 7\n")
    data, cache = DataConfig(dataset=str(raw.parent), kcore=1), tmp_path / "cache"
    assert load_or_prepare(data, 0, cache).stats()["interactions"] == 6
    prepared = cache / prepared_name(data, 0)

    def identity() -> tuple[int, int]:  # a preparation replaces the file (written atomically): a new inode
        return prepared.stat().st_ino, prepared.stat().st_mtime_ns

    written = identity()
    assert load_or_prepare(data, 0, cache).stats()["interactions"] == 6
    assert identity() == written  # read back from the cache, not prepared again
    write(raw, "1 5 6\n")
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))  # as an editor would
    assert load_or_prepare(data, 0, cache).stats()["interactions"] == 2  # not the stale cached file
    assert identity() != written
    stamp = raw.stat().st_mtime_ns
    write(raw, "1 5 7\n")  # the same size, and the old time put back, as `cp -p` or `rsync -a` would
    os.utime(raw, ns=(stamp, stamp))
    assert load_or_prepare(data, 0, cache).item_ids.tolist() == ["5", "7"]


def test_users_a_k_core_drops_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "sequential_data.txt", "1 5 6 7\n2 6 5 7\n3 8 9\n")
    with caplog.at_level("WARNING"):
        build_dataset(read_p5(tmp_path), kcore=2)
    assert "2-core kept 2 of 3 users and 3 of 5 items" in caplog.text


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("movies.csv", 'movieId,title\n10,"Heat (1995)\n20,Up (2009)\n', 2),  # every later title swallowed
        ("ratings.csv", 'userId,movieId,rating,timestamp\n1,10,4.0,5\n1,20,3.0,"3\n2,10,5.0,1\n', 3),
    ],
)
def test_a_quote_never_closed_is_named_at_its_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n")
    write(tmp_path / name, text)
    with pytest.raises(DataFormatError, match=rf"{name}:{line}: a quote is never closed"):
        read_movielens(tmp_path)


def test_a_damaged_cached_preparation_is_made_again_from_its_raw_files(tmp_path: Path) -> None:
    from lsc4rec.config import DataConfig
    from lsc4rec.data.prepared import load_or_prepare, prepared_name

    raw = write(tmp_path / "shop" / "sequential_data.txt", "1 5 6 7\n2 6 5 7\n")
    data, cache = DataConfig(dataset=str(raw.parent), kcore=1), tmp_path / "cache"
    load_or_prepare(data, 0, cache)
    (cache / prepared_name(data, 0)).write_bytes(b"")  # cut short, as by a full disk
    assert load_or_prepare(data, 0, cache).stats()["interactions"] == 6
