"""selib.data.download against a real HTTP server on 127.0.0.1 serving real archives of WAV files."""
from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from selib.audio import load
from selib.data.catalogue import CATALOGUE, Archive, Dataset, describe
from selib.data.download import DownloadError, download


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with single-range support; ``server.cut`` maps a path to a byte count
    after which the first response for it is cut off; every request is logged in ``server.log``."""

    def do_GET(self):
        path = self.path.split("?")[0]
        self.server.log.append((path, self.headers.get("Range")))
        if path not in self.server.files:
            self.send_error(404)
            return
        data = self.server.files[path]
        start, status = 0, 200
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut.pop(path, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.server.sent.append(len(body) if cut is None else cut)
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut, srv.log, srv.sent = {}, {}, [], []
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """Three real 16 kHz WAV files of different lengths; returns {relative name: path}."""
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    out = {}
    for i, seconds in enumerate((0.5, 0.8, 1.1)):
        name = f"clean_testset_wav/p232_{i + 1:03d}.wav"
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        sf.write(path, 0.3 * rng.uniform(-1, 1, int(seconds * 16000)), 16000, subtype="PCM_16")
        out[name] = path
    return out


def _archive(wavs, kind="zip") -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for name, path in wavs.items():
                z.write(path, name)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, path in wavs.items():
                t.add(path, name)
    return buf.getvalue()


def _entry(server, data, filename="test.zip", **sums) -> Dataset:
    server.files["/files/" + filename] = data
    return Dataset("toyset", "a test archive", "CC0", server.url,
                   (Archive(filename, f"{server.url}/files/{filename}?sequence=1", **sums),))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_verified_download_unpacks_real_wavs(server, wavs, tmp_path, kind):
    data = _archive(wavs, kind)
    entry = _entry(server, data, f"test.{kind}", sha256=hashlib.sha256(data).hexdigest())
    root = download(entry, tmp_path, progress=False)
    assert root == tmp_path / "toyset"
    for name, original in wavs.items():
        np.testing.assert_array_equal(load(root / name).numpy(), load(original).numpy())
    assert not (root / f"test.{kind}").exists()  # the archive is removed once unpacked
    marker = (root / f".test.{kind}.done").read_text()
    assert marker.split() == ["sha256", hashlib.sha256(data).hexdigest()]
    assert server.log == [(f"/files/test.{kind}", None)]
    download(entry, tmp_path, progress=False)  # already unpacked: no new request
    assert len(server.log) == 1


def test_md5_checked_when_no_sha256(server, wavs, tmp_path):
    data = _archive(wavs)
    entry = _entry(server, data, md5=hashlib.md5(data).hexdigest())
    root = download(entry, tmp_path, progress=False, keep_archives=True)
    assert (root / "test.zip").read_bytes() == data
    assert sorted(p.name for p in (root / "clean_testset_wav").iterdir()) == sorted(
        n.split("/")[1] for n in wavs)


def test_resume_from_part_file_uses_range(server, wavs, tmp_path):
    data = _archive(wavs)
    entry = _entry(server, data, sha256=hashlib.sha256(data).hexdigest())
    root = tmp_path / "toyset"
    root.mkdir()
    have = len(data) * 2 // 5
    (root / "test.zip.part").write_bytes(data[:have])
    download(entry, tmp_path, progress=False, keep_archives=True)
    assert server.log == [("/files/test.zip", f"bytes={have}-")]
    assert server.sent == [len(data) - have]  # only the missing bytes travelled
    assert (root / "test.zip").read_bytes() == data
    assert not (root / "test.zip.part").exists()
    assert len(list((root / "clean_testset_wav").iterdir())) == len(wavs)


def test_interrupted_transfer_resumes(server, wavs, tmp_path):
    data = _archive(wavs)
    entry = _entry(server, data, sha256=hashlib.sha256(data).hexdigest())
    server.cut["/files/test.zip"] = 10_000
    root = download(entry, tmp_path, progress=False, keep_archives=True)
    assert server.log == [("/files/test.zip", None), ("/files/test.zip", "bytes=10000-")]
    assert (root / "test.zip").read_bytes() == data


def test_wrong_checksum_is_rejected_and_not_unpacked(server, wavs, tmp_path):
    data = _archive(wavs)
    entry = _entry(server, data, sha256="0" * 64)
    with pytest.raises(DownloadError, match=r"SHA-256 .* differs") as err:
        download(entry, tmp_path, progress=False)
    root = tmp_path / "toyset"
    assert "test.zip.corrupt" in str(err.value)
    assert (root / "test.zip.corrupt").read_bytes() == data  # kept aside for inspection
    assert sorted(p.name for p in root.iterdir()) == ["test.zip.corrupt"]  # nothing unpacked


def test_damaged_member_fails_crc_without_known_checksum(server, wavs, tmp_path):
    data = bytearray(_archive(wavs))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.infolist()[1]
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 5000] ^= 0xFF  # one byte inside the audio
    entry = _entry(server, bytes(data))
    with pytest.raises(DownloadError, match=info.filename):
        download(entry, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "toyset").iterdir()) == ["test.zip.corrupt"]


def test_archive_escaping_its_folder_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../escaped.txt", "outside")
    entry = _entry(server, buf.getvalue())
    with pytest.raises(DownloadError, match="outside"):
        download(entry, tmp_path / "dest", progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "dest" / ".test.zip.done").exists()


def test_entries_sharing_a_folder_fetch_each_archive_once(server, wavs, tmp_path):
    first, second = _archive(wavs), _archive(wavs, "tar.gz")
    server.files.update({"/a.zip": first, "/b.tar.gz": second})
    a = Archive("a.zip", server.url + "/a.zip", sha256=hashlib.sha256(first).hexdigest())
    b = Archive("b.tar.gz", server.url + "/b.tar.gz", sha256=hashlib.sha256(second).hexdigest())
    small = Dataset("small", "a", "CC0", server.url, (a,), folder="shared")
    full = Dataset("full", "a and b", "CC0", server.url, (a, b), folder="shared")
    assert download(small, tmp_path, progress=False) == tmp_path / "shared"
    assert download(full, tmp_path, progress=False) == tmp_path / "shared"
    assert [path for path, _ in server.log] == ["/a.zip", "/b.tar.gz"]


def test_http_404_is_a_clear_error(server, tmp_path):
    entry = Dataset("toyset", "missing", "CC0", server.url,
                    (Archive("gone.zip", f"{server.url}/files/gone.zip"),))
    with pytest.raises(DownloadError, match=r"HTTP 404 .*/files/gone\.zip.*gone\.zip"):
        download(entry, tmp_path, progress=False)
    assert list((tmp_path / "toyset").iterdir()) == []
    assert len(server.log) == 1  # a 404 is not retried


def test_registry_names_and_manual_recipe(tmp_path):
    with pytest.raises(DownloadError, match="unknown dataset 'vctk'.*voicebank"):
        download("vctk", tmp_path)
    with pytest.raises(DownloadError, match="git lfs pull") as err:
        download("dns2020", tmp_path)
    assert str(tmp_path / "dns2020") in str(err.value)
    assert not (tmp_path / "dns2020").exists()  # nothing was attempted
    text = "\n".join(describe())
    for name in CATALOGUE:
        assert text.count(f"{name}: ") == 1
    assert "clean_testset_wav.zip ≈147 MB, checked by md5 (third-party, unverified)" in text
    assert CATALOGUE["voicebank-test"].folder == "voicebank"  # the test zips are not fetched twice
    assert set(CATALOGUE["voicebank-test"].archives) < set(CATALOGUE["voicebank"].archives)
    # the full VB set is the 28-speaker training zips plus the test zips (docs/datasets.md sizes: ≈5.2 GB)
    assert CATALOGUE["voicebank"].approx_bytes == 2300e6 + 2600e6 + 147e6 + 163e6


def _tar_with(kind: str, wavs) -> bytes:
    """A gzipped tar holding the WAVs and one symbolic or hard link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, path in wavs.items():
            t.add(path, name)
        link = tarfile.TarInfo("clean_testset_wav/link.wav")
        link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        link.linkname = "/etc/passwd" if kind == "symlink" else next(iter(wavs))
        t.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("kind,what", [("symlink", "a symbolic link"), ("hardlink", "a hard link")])
def test_tar_links_are_refused_before_anything_is_unpacked(server, wavs, tmp_path, kind, what):
    entry = _entry(server, _tar_with(kind, wavs), filename="test.tar.gz")
    with pytest.raises(DownloadError, match=rf"member 'clean_testset_wav/link\.wav' is {what}.*refuses") as err:
        download(entry, tmp_path, progress=False)
    assert "kept aside as" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "toyset").iterdir()) == ["test.tar.gz.corrupt"]


def test_compressed_tar_is_verified_end_to_end_without_a_checksum(server, wavs, tmp_path):
    """A flipped byte in the gzip trailer's CRC-32: every tar header still reads, the stream does not."""
    data = bytearray(_archive(wavs, "tar.gz"))
    data[-6] ^= 0xFF
    entry = _entry(server, bytes(data), filename="test.tar.gz")
    with pytest.raises(DownloadError, match=r"test\.tar\.gz: the gzip stream is damaged .*CRC"):
        download(entry, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "toyset").iterdir()) == ["test.tar.gz.corrupt"]


def test_unpacking_goes_through_a_staging_folder_that_is_gone_afterwards(server, wavs, tmp_path):
    root = tmp_path / "toyset"
    stale = root / ".test.tar.gz.unpacking"
    (stale / "clean_testset_wav").mkdir(parents=True)
    (stale / "clean_testset_wav" / "half.wav").write_bytes(b"left by a killed unpack")
    entry = _entry(server, _archive(wavs, "tar.gz"), filename="test.tar.gz")
    assert download(entry, tmp_path, progress=False) == root
    assert sorted(p.name for p in root.iterdir()) == [".test.tar.gz.done", "clean_testset_wav"]
    assert sorted(p.name for p in (root / "clean_testset_wav").iterdir()) == [
        "p232_001.wav", "p232_002.wav", "p232_003.wav"]
