import numpy as np
import pandas as pd
import pytest

from ftune.config import DataConfig
from ftune.data import encode, load_splits
from ftune.data.batching import eval_batches, train_batches
from ftune.data.sources import read_source
from ftune.errors import DataError
from helpers import synthetic_reviews



def cfg(path, **kw) -> DataConfig:
    return DataConfig(train=str(path), text_column="review", label_column="stars", **kw)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_file_format_reads_the_same_rows(tmp_path, suffix):
    frame = synthetic_reviews(50)
    path = tmp_path / f"d{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     ".json": lambda: frame.to_json(path, orient="records"), ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    read = read_source(str(path))
    assert read[["review", "stars"]].astype(str).equals(frame.astype(str))


def test_save_to_disk_folder_with_its_own_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(synthetic_reviews(80)),
                               "test": datasets.Dataset.from_pandas(synthetic_reviews(20, seed=1))})
    dd.save_to_disk(tmp_path / "ds")
    splits = load_splits(cfg(tmp_path / "ds"), seed=0)
    assert len(splits.test) == 20 and len(splits.train) + len(splits.validation) == 80


def test_stratified_split_is_deterministic_and_keeps_balance(reviews_csv):
    a, b = load_splits(cfg(reviews_csv), seed=0), load_splits(cfg(reviews_csv), seed=0)
    assert (len(a.train), len(a.validation), len(a.test)) == (288, 32, 80)
    assert a.train["text"].tolist() == b.train["text"].tolist()
    assert a.test["label"].mean() == 0.5 and a.validation["label"].mean() == 0.5
    assert a.labels == ["neg", "pos"]
    c = load_splits(cfg(reviews_csv), seed=1)
    assert c.test["text"].tolist() != a.test["text"].tolist()


def test_split_column_and_separate_test_file(tmp_path):
    frame = synthetic_reviews(60).assign(part=["train"] * 40 + ["dev"] * 10 + ["test"] * 10)
    frame.to_csv(tmp_path / "all.csv", index=False)
    s = load_splits(cfg(tmp_path / "all.csv", split_column="part"), seed=0)
    assert (len(s.train), len(s.validation), len(s.test)) == (40, 10, 10)
    synthetic_reviews(30, seed=2).to_csv(tmp_path / "test.csv", index=False)
    s = load_splits(cfg(tmp_path / "all.csv", test=str(tmp_path / "test.csv")), seed=0)
    assert len(s.test) == 30


def test_integer_labels_sort_numerically_and_pairs_are_kept(tmp_path):
    frame = pd.DataFrame({"a": [f"q{i}" for i in range(40)], "b": [f"r{i}" for i in range(40)],
                          "y": [2, 10, 1] * 13 + [2]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    s = load_splits(DataConfig(train=str(tmp_path / "p.csv"), text_column="a", text_pair_column="b",
                               label_column="y"), seed=0)
    assert s.labels == ["1", "2", "10"] and "text_pair" in s.train


def test_subsampling(reviews_csv):
    s = load_splits(cfg(reviews_csv, max_train_samples=50, max_eval_samples=10), seed=0)
    assert (len(s.train), len(s.validation), len(s.test)) == (50, 10, 10)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.rename(columns={"review": "reviews"}), "no column 'review' (columns: reviews, stars); did you mean 'reviews'?"),
    (lambda f: f.assign(review=[""] + f.review.tolist()[1:]), "row 1: empty text in column 'review'"),
    (lambda f: f.assign(stars=f.stars.tolist()[:-1] + [None]), "row 40: empty label in column 'stars'"),
])
def test_data_mistakes_name_the_place_and_the_fix(tmp_path, change, message):
    path = tmp_path / "bad.csv"
    change(synthetic_reviews(40)).to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        load_splits(cfg(path), seed=0)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_label_seen_only_outside_train_is_an_error(tmp_path):
    synthetic_reviews(40).to_csv(tmp_path / "train.csv", index=False)
    synthetic_reviews(10).assign(stars="meh").to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test.csv row 1: the test split has label 'meh', which does not occur in the "
                                        r"training data \(labels: neg, pos\), so the model cannot predict it; fix the "
                                        r"label, add training examples for it, or remove the 10 such test rows"):
        load_splits(cfg(tmp_path / "train.csv", test=str(tmp_path / "test.csv")), seed=0)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(cfg(tmp_path / "nope.csv"), seed=0)
    (tmp_path / "latin.csv").write_bytes(b"review,stars\nok,pos\ncaf\xe9,neg\n")
    with pytest.raises(DataError, match=r"latin.csv line 3: not valid UTF-8"):
        load_splits(cfg(tmp_path / "latin.csv"), seed=0)
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_splits(cfg(tmp_path / "x.xlsx"), seed=0)


def test_tokenization_is_cached_by_content(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    frame = synthetic_reviews(20).rename(columns={"review": "text"})
    first = encode(frame, tok, max_length=8)
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 1
    again = encode(frame, tok, max_length=8)
    assert all((a == b).all() for a, b in zip(first.input_ids, again.input_ids))
    assert max(first.lengths) <= 8
    encode(frame, tok, max_length=16)  # another max length is another cache entry
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 2


@pytest.mark.parametrize("group", [True, False])
def test_train_batches_cover_each_example_once_and_depend_only_on_seed_and_epoch(group):
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    batches = train_batches(lengths, 32, seed=0, epoch=1, group_by_length=group)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == train_batches(lengths, 32, seed=0, epoch=1, group_by_length=group)
    assert batches != train_batches(lengths, 32, seed=0, epoch=2, group_by_length=group)


def test_a_token_budget_fills_batches_of_similar_length_up_to_it():
    lengths = np.concatenate([np.random.default_rng(0).integers(3, 120, size=2000), [1500]])  # one longer than the budget
    batches = train_batches(lengths, 256, seed=0, epoch=0, group_by_length=False, max_tokens=1024)
    assert sorted(i for b in batches for i in b) == list(range(2001))
    assert batches == train_batches(lengths, 256, 0, 0, False, max_tokens=1024)  # a pure function of seed and epoch
    assert all(len(b) * lengths[b].max() <= 1024 for b in batches if len(b) > 1)
    assert [b for b in batches if lengths[b].max() > 1024] == [[2000]]  # alone in its batch
    assert max(len(b) for b in batches) > 64  # short texts come in larger batches
    assert all(len(b) <= 16 for b in train_batches(lengths, 16, 0, 0, False, max_tokens=1024))  # the count still caps


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(0).integers(3, 120, size=2000)
    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)
    grouped = padded(train_batches(lengths, 32, 0, 0, True))
    plain = padded(train_batches(lengths, 32, 0, 0, False))
    assert grouped < 0.7 * plain
    assert sorted(i for b in eval_batches(lengths, 100) for i in b) == list(range(2000))
