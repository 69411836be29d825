"""Transfer sets (selib.data.transfer): noisy audio without references, drawn deterministically, never
carrying a clean signal; on a real embedded corpus and real files."""
import numpy as np
import pytest
import soundfile as sf
import torch

from selib.data import build_embedded, get_dataset
from selib.data.transfer import NoisyFolder, WithTransfer, transfer_set

DATA = {"name": "embedded", "segment_seconds": 0.5, "train_limit": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_embedded(tmp_path_factory.mktemp("transfer"), n_train=12, n_valid=1, n_test=1, workers=1,
                          verbose=False)


def _with_transfer(corpus, seed):
    data = dict(DATA, root=corpus)
    labelled = get_dataset("embedded", "train", root=corpus, segment_seconds=0.5, seed=seed, limit=4)
    return WithTransfer(labelled, transfer_set("rest", data, seed), seed)


def test_transfer_items_are_a_function_of_seed_epoch_and_index_and_carry_no_clean(corpus):
    ds, again = _with_transfer(corpus, 3), _with_transfer(corpus, 3)
    assert len(ds) == 4 and len(ds.transfer) == 8
    epoch0 = [ds[i] for i in range(4)]
    for i, item in enumerate(epoch0):
        assert set(item) == {"id", "noisy", "clean", "transfer_id", "transfer_noisy"}
        assert set(ds.transfer[0]) == {"id", "noisy"}          # no clean signal in a transfer item
        assert item["transfer_id"] not in {f"train_{k:04d}" for k in range(4)}   # never a labelled item
        assert item["transfer_noisy"].shape == (8000,)
        assert item["transfer_id"] == again[i]["transfer_id"]
        assert torch.equal(item["transfer_noisy"], again[i]["transfer_noisy"])
    ds.set_epoch(1)
    epoch1 = [ds[i] for i in range(4)]
    assert [x["transfer_id"] for x in epoch1] != [x["transfer_id"] for x in epoch0] or \
        any(not torch.equal(a["transfer_noisy"], b["transfer_noisy"]) for a, b in zip(epoch0, epoch1))
    ds.set_epoch(0)
    assert all(torch.equal(ds[i]["transfer_noisy"], epoch0[i]["transfer_noisy"]) for i in range(4))
    other = _with_transfer(corpus, 4)
    assert [other[i]["transfer_id"] for i in range(4)] != [x["transfer_id"] for x in epoch0]
    # the transfer item is the noisy crop of that training item, as the paired dataset cuts it
    paired = get_dataset("embedded", "train", root=corpus, segment_seconds=0.5, seed=3)
    k = int(epoch0[0]["transfer_id"].split("_")[1])
    assert torch.equal(paired[k]["noisy"], epoch0[0]["transfer_noisy"])


def test_transfer_rest_needs_a_label_limit_and_enough_items(corpus):
    with pytest.raises(ValueError, match="data.train_limit"):
        transfer_set("rest", dict(DATA, root=corpus, train_limit=None), 0)
    with pytest.raises(ValueError, match="lower data.train_limit"):
        transfer_set("rest", dict(DATA, root=corpus, train_limit=12), 0)


def test_transfer_folder_reads_recordings_at_any_rate_and_names_bad_folders(tmp_path):
    folder = tmp_path / "recordings"
    (folder / "day2").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", 0.1 * rng.standard_normal(16000), 16000)
    sf.write(folder / "day2" / "b.flac", 0.1 * rng.standard_normal(44100), 44100)
    (folder / "notes.txt").write_text("not audio")
    ds = transfer_set({"folder": str(folder)}, DATA, 0)
    assert isinstance(ds, NoisyFolder) and len(ds) == 2
    items = [ds[0], ds[1]]
    assert [x["id"] for x in items] == ["a.wav", "day2/b.flac"]
    assert all(set(x) == {"id", "noisy"} and x["noisy"].shape == (8000,) for x in items)
    assert torch.equal(ds[1]["noisy"], transfer_set({"folder": str(folder)}, DATA, 0)[1]["noisy"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NoisyFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav or .flac files"):
        NoisyFolder(tmp_path / "empty")
