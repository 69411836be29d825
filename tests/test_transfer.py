"""Transfer sets (selib.data.transfer): noisy audio without references, drawn deterministically, never
carrying a clean signal; on a real embedded corpus and real files."""
import numpy as np
import pytest
import soundfile as sf
import torch

from selib.config import load
from selib.data import build_embedded, get_dataset
from selib.data.transfer import NoisyFolder, NoisyOnly, WithTransfer, transfer_set
from selib.train import Trainer

import reference  # tests/helpers
from bad_input import write_checkpoint
from runner import SyntheticPairs

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


# ---------------------------------------------------------------- training with a transfer set

class _OtherClean(torch.utils.data.Dataset):
    """``pairs`` with the same noisy items and a different clean signal (``scale`` times noise)."""

    def __init__(self, pairs, scale):
        self.pairs, self.scale = pairs, scale

    def set_epoch(self, epoch):
        self.pairs.set_epoch(epoch)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        item = dict(self.pairs[i])
        item["clean"] = self.scale * torch.randn(item["clean"].shape, generator=torch.Generator().manual_seed(i))
        return item


def _trainer(tmp_path, name, transfer_pairs, **config):
    teacher = tmp_path / "teacher.pt"
    if not teacher.exists():
        write_checkpoint(teacher, "dccrn", "tiny-student")
    base = {"seed": 0, "device": "cpu",
            "data": {"segment_seconds": 0.25, "batch_size": 2, "train_limit": 2, "transfer": "rest"},
            "model": {"family": "dccrn", "preset": "tiny-student"},
            "teacher": {"family": "dccrn", "preset": "tiny-student", "checkpoint": str(teacher)},
            "kd": {"method": "logits-sisnr"},
            "optim": {"lr": 3e-3, "epochs": 100, "max_steps": 4, "checkpoint_every": 0},
            "eval": {"metrics": ["si_sdr"], "workers": 1}}
    cfg = load(base, {k.replace("__", "."): v for k, v in config.items()})
    train = WithTransfer(SyntheticPairs(2, 0.25, seed=1), NoisyOnly(transfer_pairs), seed=0)
    datasets = {"train": train, "valid": SyntheticPairs(2, 0.25, seed=2), "test": SyntheticPairs(2, 0.25, seed=3)}
    return Trainer(cfg, tmp_path / name, datasets=datasets)


def test_transfer_clean_signals_never_reach_the_loss(tmp_path):
    pool = SyntheticPairs(6, 0.25, seed=7)
    runs = {}
    for name, transfer in [("zeros", _OtherClean(pool, 0.0)), ("loud", _OtherClean(pool, 0.9)),
                           ("other_noisy", SyntheticPairs(6, 0.25, seed=8))]:
        trainer = _trainer(tmp_path, name, transfer)
        trainer.fit()
        runs[name] = torch.cat([p.detach().flatten() for p in trainer.student.parameters()])
    assert torch.equal(runs["zeros"], runs["loud"])            # what stands in a transfer item's clean is unused
    assert not torch.equal(runs["zeros"], runs["other_noisy"])  # while its noisy audio does train the student


def test_kd_term_on_transfer_rows_is_the_method_loss_on_the_same_tensors(tmp_path):
    trainer = _trainer(tmp_path, "direct", SyntheticPairs(6, 0.25, seed=7))
    batch = next(iter(trainer._loader(0)))
    noisy, clean, labelled = trainer.training_step.inputs(batch, torch.device("cpu"))
    assert labelled.tolist() == [True, True, False, False]
    assert torch.equal(noisy[2:], batch["transfer_noisy"]) and not clean[2:].any()
    with torch.no_grad():
        se, kd_loss, _ = trainer.training_step.losses(noisy, clean, local=True, labelled=labelled)
        student, teacher = trainer.student(noisy).numpy(), trainer.teacher(noisy).numpy()
    assert float(kd_loss) == pytest.approx(-reference.si_sdr(student, teacher).mean(), rel=1e-4)
    assert float(se) == pytest.approx(-reference.si_sdr(student[:2], clean[:2].numpy()).mean(), rel=1e-4)


def test_two_step_schedule_trains_on_kd_alone_until_the_configured_step(tmp_path):
    trainer = _trainer(tmp_path, "two-step", SyntheticPairs(6, 0.25, seed=7), kd__schedule="two-step",
                       kd__pretrain_share=0.5, kd__weight=2.0)
    assert [trainer.supervised(s) for s in range(4)] == [False, False, True, True]
    history = trainer.fit()                                  # one step per epoch: 2 items, batch 2
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for h in history:
        expected = 2.0 * h["train_kd"] + (h["train_se"] if h["step"] > 2 else 0.0)
        assert h["train_loss"] == pytest.approx(expected, rel=1e-5), h
