"""Public benchmark archives and a resumable, verified downloader (lesson ``00_data_and_listening``).

:data:`selib.data.catalogue.CATALOGUE` lists what selib knows how to fetch; ``download(name, dest)``
fetches every archive of an entry over HTTP with resume (a ``.part`` file and an HTTP ``Range``
request), verifies it (SHA-256 when known, else the third-party MD5, plus the size the server
announced, plus the archive's own CRCs) and only then unpacks it. A corrupted archive is moved aside as ``<name>.corrupt`` and nothing is unpacked.
DNS2020 has no plain archive (its audio lives in Git LFS): its entry carries the recipe instead.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from selib.data.catalogue import CATALOGUE, Archive, Dataset, size_text

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed or could not be verified; the message names the file and the fix."""


def _entry(name: str | Dataset) -> Dataset:
    if isinstance(name, Dataset):
        return name
    if name not in CATALOGUE:
        raise DownloadError(f"unknown dataset {name!r}; choose one of {sorted(CATALOGUE)} "
                            "(`selib data list` describes them).")
    return CATALOGUE[name]


def download(name: str | Dataset, dest: str | Path = "data", *, keep_archives: bool = False,
             verify: bool = True, retries: int = 3, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Fetch, verify and unpack every archive of a dataset into ``dest/<folder>/``; return that folder.

    VoiceBank+DEMAND lands in ``dest/voicebank/{clean,noisy}_{testset,trainset_28spk}_wav/`` (48 kHz
    WAV, as published); DNS2020 is fetched by hand into ``dest/dns2020/`` (the error shows how).

    ``name`` is a key of :data:`~selib.data.catalogue.CATALOGUE` or a :class:`Dataset`. An interrupted download resumes from
    its ``.part`` file. ``verify=False`` skips the SHA-256/MD5 comparison (use it only if the
    third-party MD5 is wrong and you have checked the file yourself); the size and archive CRC checks
    always run. Archives already unpacked (a ``.<file>.done`` marker) are skipped.
    """
    entry = _entry(name)
    root = Path(dest) / (entry.folder or entry.name)
    if entry.recipe:
        raise DownloadError(f"{entry.name} cannot be downloaded automatically.\n"
                            + entry.recipe.format(root=root))
    root.mkdir(parents=True, exist_ok=True)
    todo = [a for a in entry.archives if not (root / f".{a.filename}.done").is_file()]
    need = sum(a.approx_bytes or 0 for a in todo) * (1 if keep_archives else 2)
    free = shutil.disk_usage(root).free
    if need > free:
        raise DownloadError(f"{root}: {entry.name} needs about {size_text(need)} of disk for the archives "
                            f"and their contents, but only {size_text(free)} is free; "
                            "choose another --dest.")
    for archive in todo:
        path = root / archive.filename
        if not path.is_file():
            _fetch(archive.url, path, retries=retries, timeout=timeout, progress=progress)
        try:  # nothing is unpacked unless the checksum, the size and the archive's CRCs all pass
            digest = _verify(archive, path, verify)
            names = _members(path)
        except DownloadError as err:
            corrupt = path.replace(path.with_name(path.name + ".corrupt"))
            raise DownloadError(f"{err} Nothing was unpacked; the file was kept aside as {corrupt}.") \
                from None
        _unpack(path, names, root)
        (root / f".{archive.filename}.done").write_text(f"sha256 {digest}\n")
        if not keep_archives:
            path.unlink()
    return root


def _fetch(url: str, path: Path, *, retries: int, timeout: float, progress: bool) -> None:
    """Download ``url`` to ``path`` through ``path.part``, resuming it with HTTP Range requests."""
    part = path.with_name(path.name + ".part")
    for attempt in range(retries + 1):
        try:
            if _fetch_once(url, part, timeout, progress):
                part.replace(path)
                return
            reason = "the transfer stopped before the end of the file"
        except urllib.error.HTTPError as err:
            if err.code < 500:
                raise DownloadError(
                    f"HTTP {err.code} {err.reason} for {url} ({path.name}): the file is not there; "
                    "check the URL or the dataset's landing page, it may have moved.") from err
            reason = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = str(getattr(err, "reason", err))
        if attempt < retries:
            print(f"{path.name}: {reason}; resuming (attempt {attempt + 2} of {retries + 1})",
                  file=sys.stderr)
            time.sleep(min(2 ** attempt, 30))
    raise DownloadError(f"{url}: download failed after {retries + 1} attempts ({reason}); "
                        f"run the command again to resume from {part}.")


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> bool:
    """One HTTP request continuing ``part``; True once it holds the whole file."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "selib-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the .part may already be complete
            total = err.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                return True
            part.unlink()  # the .part is longer than the file: start again
            return False
        raise
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""), url)
            if start != have:
                raise DownloadError(f"{url}: asked to resume at byte {have} but the server sent "
                                    f"bytes from {start}; delete {part} and run again.")
        else:  # 200: the server ignored the Range header, start from zero
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5],
                disable=not progress, file=sys.stderr) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is None:
        return True
    if size > total:
        part.unlink()
        raise DownloadError(f"{url}: received {size} bytes but the server announced {total}; "
                            "the partial file was removed, run again.")
    return size == total


def _content_range(header: str, url: str) -> tuple[int, int | None]:
    """Parse ``bytes START-END/TOTAL`` (TOTAL may be ``*``)."""
    try:
        unit, _, spec = header.partition(" ")
        span, _, total = spec.partition("/")
        if unit != "bytes":
            raise ValueError(unit)
        return int(span.split("-")[0]), (int(total) if total != "*" else None)
    except ValueError as err:
        raise DownloadError(f"{url}: the server sent an invalid Content-Range {header!r}.") from err


def _verify(archive: Archive, path: Path, check_sums: bool) -> str:
    """Compare ``path`` with the archive's SHA-256 (else its MD5); return the SHA-256 hex digest."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    if check_sums:
        if archive.sha256 and sha.hexdigest() != archive.sha256.lower():
            raise DownloadError(f"{path}: SHA-256 {sha.hexdigest()} differs from the registry's "
                                f"{archive.sha256}: the file is corrupted. Run the download again.")
        if not archive.sha256 and archive.md5 and md5.hexdigest() != archive.md5.lower():
            raise DownloadError(
                f"{path}: MD5 {md5.hexdigest()} differs from the third-party (unverified) "
                f"{archive.md5}. Run the download again; if it differs again and the archive opens, "
                "the published MD5 may be wrong: call selib.data.download.download(..., verify=False).")
    return sha.hexdigest()


_COMPRESSED_TAR = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}


def _read_compressed_to_end(path: Path) -> None:
    """Decompress a .tar.gz/.bz2/.xz stream to its end, so that its own CRC is checked (tarfile
    stops at the end-of-archive blocks and never reads the trailer that holds it)."""
    import bz2
    import gzip
    import lzma

    with open(path, "rb") as f:
        head = f.read(6)
    kind = next((k for magic, k in _COMPRESSED_TAR.items() if head.startswith(magic)), None)
    if kind is None:
        return
    opener = {"gzip": gzip.open, "bz2": bz2.open, "lzma": lzma.open}[kind]
    try:
        with opener(path, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as err:
        raise DownloadError(f"{path}: the {kind} stream is damaged ({err}); run the download again.") from None


def _members(path: Path) -> list[str]:
    """Names inside a zip or tar archive, after checking the archive's integrity end to end (every zip
    member's CRC, a compressed tar's stream CRC) and that a tar holds only files and folders."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                names = z.namelist()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            bad = err
        if bad is not None:
            raise DownloadError(f"{path}: the zip archive is damaged ({bad} fails its check). "
                                "Run the download again.")
        return names
    if tarfile.is_tarfile(path):
        _read_compressed_to_end(path)
        try:
            with tarfile.open(path) as t:
                members = t.getmembers()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DownloadError(f"{path}: the tar archive is damaged ({err}); run the download "
                                "again.") from err
        odd = [m for m in members if not (m.isfile() or m.isdir())]
        if odd:
            kind = "a symbolic link" if odd[0].issym() else "a hard link" if odd[0].islnk() else "a special file"
            raise DownloadError(f"{path}: member {odd[0].name!r} is {kind}; selib unpacks only files and "
                                "folders, so it refuses this archive (get it from the dataset's landing page).")
        return [m.name for m in members]
    raise DownloadError(f"{path}: not a zip or tar archive (perhaps an HTML error page); check the "
                        "URL and run the download again.")


def _unpack(path: Path, names: list[str], root: Path) -> None:
    """Extract a verified zip or tar into ``root``, refusing members that would land outside it.
    Extraction goes to a hidden folder next to its destination that is moved into place only when
    complete, so no partial unpack is ever left behind (a kill leaves the hidden folder, which the
    next attempt clears)."""
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(f"{path}: member {name!r} would be written outside {root}; "
                                "refusing to unpack this archive.")
    staging = root / f".{path.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                z.extractall(staging)
        else:
            with tarfile.open(path) as t:
                t.extractall(staging, filter="data")
        _move_into(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(source: Path, dest: Path) -> None:
    """Move the content of folder ``source`` into ``dest``, merging folders that exist in both."""
    for entry in sorted(source.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and target.is_dir():
            _move_into(entry, target)
        else:
            os.replace(entry, target)
