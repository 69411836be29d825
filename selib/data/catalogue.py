"""The public datasets selib can fetch (lesson ``00_data_and_listening``; docs/datasets.md): the
archives of each, with their sizes and checksums, or the recipe of a manual fetch.
:mod:`selib.data.download` fetches them; ``selib data list`` prints :func:`describe`. Not to be confused
with :data:`selib.constants.DATASETS`, the corpora :func:`selib.data.get_dataset` reads.
"""
from __future__ import annotations

from dataclasses import dataclass

GB, MB = 1000 ** 3, 1000 ** 2


@dataclass(frozen=True)
class Archive:
    """One downloadable file. ``approx_bytes`` is for display and the disk-space check only;
    ``md5`` is a third-party sum (unverified by selib); ``sha256`` is set once someone has checked it."""

    filename: str
    url: str
    approx_bytes: int | None = None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A registry entry: the archives unpacked into ``dest/<folder or name>/``, or a ``recipe`` for a
    manual fetch. Entries sharing a folder share their archives (each is fetched once)."""

    name: str
    description: str
    licence: str
    landing: str
    archives: tuple[Archive, ...] = ()
    recipe: str | None = None
    folder: str | None = None

    @property
    def approx_bytes(self) -> int | None:
        sizes = [a.approx_bytes for a in self.archives]
        return sum(sizes) if sizes and None not in sizes else None


_VB_URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/{}?sequence={}&isAllowed=y"
_VB_LANDING = "https://datashare.ed.ac.uk/handle/10283/2791 (DOI 10.7488/ds/2117)"
_VB_TEST = (
    Archive("clean_testset_wav.zip", _VB_URL.format("clean_testset_wav.zip", 1), 147 * MB,
            md5="34eb1c0ba7ef667e9b966866c542fc16"),
    Archive("noisy_testset_wav.zip", _VB_URL.format("noisy_testset_wav.zip", 5), 163 * MB,
            md5="fb1b86caa31e8ba5b506c0c64da9aab5"),
)
_VB_TRAIN = (
    Archive("clean_trainset_28spk_wav.zip", _VB_URL.format("clean_trainset_28spk_wav.zip", 2),
            2300 * MB, md5="d2d5a45ec32f8fcbf201bde0447e20ba"),
    Archive("noisy_trainset_28spk_wav.zip", _VB_URL.format("noisy_trainset_28spk_wav.zip", 6),
            2600 * MB, md5="1fca9e8bafb8cd069f6653c6d92f9e9c"),
)

_DNS_RECIPE = """\
DNS Challenge 2020 has no plain archive: its audio is stored in Git LFS on the
interspeech2020/master branch of microsoft/DNS-Challenge (a clone without LFS holds only pointers,
and the 5.4 MB blob archive holds pointers too). Fetch the synthetic test set (about 200 MB) with
git and git-lfs:

  GIT_LFS_SKIP_SMUDGE=1 git clone --depth 1 --single-branch --branch interspeech2020/master \\
      https://github.com/microsoft/DNS-Challenge.git {root}
  cd {root}
  git lfs install --local
  git lfs pull --include "datasets/test_set/synthetic/**"

The pairs are then in {root}/datasets/test_set/synthetic/{{no_reverb,with_reverb}}/{{clean,noisy}}/
(paired by the trailing fileid_<N>). For training data also pull "datasets/clean/**" (64.8 GB) and
"datasets/noise/**" (20.9 GB); LFS is slow and quota-limited (users report about 70 hours for
everything)."""

CATALOGUE: dict[str, Dataset] = {d.name: d for d in (
    Dataset("voicebank-test",
            "VoiceBank+DEMAND test set: 824 clean/noisy pairs, speakers p232 and p257, 48 kHz WAV",
            "CC BY 4.0 (DEMAND noise: CC BY-SA 3.0)", _VB_LANDING, _VB_TEST, folder="voicebank"),
    Dataset("voicebank",
            "VoiceBank+DEMAND, 28-speaker training set (11572 pairs) and test set (824 pairs), "
            "48 kHz WAV",
            "CC BY 4.0 (DEMAND noise: CC BY-SA 3.0)", _VB_LANDING, _VB_TRAIN + _VB_TEST),
    Dataset("dns2020",
            "DNS Challenge 2020 (Interspeech): synthetic test set of 150 + 150 pairs at 16 kHz; "
            "500 h of training speech and noise",
            "CC BY 4.0 (content), MIT (code)",
            "https://github.com/microsoft/DNS-Challenge/tree/interspeech2020/master",
            recipe=_DNS_RECIPE),
)}


def size_text(n: int | None) -> str:
    """``n`` bytes as ``1.2 GB`` or ``147 MB``."""
    if n is None:
        return "size unknown"
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.0f} MB"


def describe(datasets: dict[str, Dataset] | None = None) -> list[str]:
    """Lines describing every catalogue entry, for ``selib data list``."""
    lines = []
    for d in (CATALOGUE if datasets is None else datasets).values():
        how = "manual (git LFS), see its recipe" if d.recipe else f"≈{size_text(d.approx_bytes)}"
        lines.append(f"{d.name}: {d.description}")
        lines.append(f"    {how}; licence {d.licence}; {d.landing}")
        for a in d.archives:
            check = ("sha256" if a.sha256 else "md5 (third-party, unverified)" if a.md5
                     else "size and archive CRC only")
            lines.append(f"    - {a.filename} ≈{size_text(a.approx_bytes)}, checked by {check}")
    return lines
