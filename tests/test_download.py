"""Downloads against a local HTTP server (loopback only, stops by itself) and safe unpacking."""
import collections
import hashlib
import http.server
import io
import re
import socket
import stat
import tarfile
import threading
import time
import zipfile

import pytest

from utils import datasets, download
from utils.download import (
    ChecksumError,
    DiskSpaceError,
    DownloadError,
    Resource,
    UnsafeArchiveError,
)

PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes: several reads, small enough to be instant
SERVER_LIFETIME_S = 30


class FileServer:
    """Serves ``files`` on 127.0.0.1, honouring ``Range`` unless told not to.

    ``drops`` responses are cut after ``drop_after`` bytes (the connection is closed mid-body).
    Every request's path and ``Range`` header is kept in ``requests``.
    """

    def __init__(self, files: dict[str, bytes], *, drop_after: int = 0, drops: int = 0,
                 ignore_range: bool = False):
        self.files, self.drop_after, self.drops = files, drop_after, drops
        self.ignore_range = ignore_range
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.timeout = 0.1
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def _serve(self):
        deadline = time.monotonic() + SERVER_LIFETIME_S  # never outlives a stuck test
        while not self.stopped.is_set() and time.monotonic() < deadline:
            self.httpd.handle_request()
        self.httpd.server_close()

    def stop(self):
        self.stopped.set()
        self.thread.join()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = self._range_start()
                if start is None:
                    self.send_response(200)
                else:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    body = body[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops:
                    server.drops -= 1
                    body = body[: server.drop_after]
                self.wfile.write(body)

            def _range_start(self):
                value = self.headers.get("Range")
                if server.ignore_range or not value:
                    return None
                return int(value.removeprefix("bytes=").rstrip("-"))

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def serve():
    servers = []

    def start(files, **options):
        servers.append(FileServer(files, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def resource_for(server, name="blob.bin", payload=PAYLOAD, *, size=True, sha256=True,
                 extract=False):
    return Resource(name="test blob", url=server.url(name), filename=name,
                    size=len(payload) if size else None,
                    sha256=hashlib.sha256(payload).hexdigest() if sha256 else None,
                    extract=extract)


# --- downloading ---------------------------------------------------------------------------

def test_complete_download_is_verified_and_then_reused(serve, tmp_path, capsys):
    server = serve({"blob.bin": PAYLOAD})
    path = download.download(resource_for(server), tmp_path / "new", progress=False)
    assert path == tmp_path / "new" / "blob.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "new" / "blob.bin.part").exists()
    assert "needs 307.2 kB" in capsys.readouterr().out
    download.download(resource_for(server), tmp_path / "new", progress=False)
    assert len(server.requests) == 1  # a verified file in place is not fetched again


def test_checksum_mismatch_deletes_the_file(serve, tmp_path):
    server = serve({"blob.bin": PAYLOAD})
    wrong = Resource("test blob", server.url("blob.bin"), "blob.bin", len(PAYLOAD), "0" * 64, False)
    with pytest.raises(ChecksumError) as raised:
        download.download(wrong, tmp_path, progress=False)
    message = str(raised.value)
    assert "blob.bin" in message and "0" * 64 in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_unverifiable_file_is_kept_and_its_sha256_printed(serve, tmp_path, capsys):
    server = serve({"blob.bin": PAYLOAD})
    download.download(resource_for(server, size=False, sha256=False), tmp_path, progress=False)
    out = capsys.readouterr().out
    assert f"SHA-256 {hashlib.sha256(PAYLOAD).hexdigest()}. It could NOT be verified" in out


def test_md5_only_resource_is_verified_by_md5(serve, tmp_path):
    server = serve({"blob.bin": PAYLOAD})
    good = Resource("test blob", server.url("blob.bin"), "blob.bin", None, None, False,
                    md5=hashlib.md5(PAYLOAD).hexdigest())
    assert download.download(good, tmp_path, progress=False).read_bytes() == PAYLOAD
    (tmp_path / "blob.bin").unlink()
    bad = Resource("test blob", server.url("blob.bin"), "blob.bin", None, None, False, md5="f" * 32)
    with pytest.raises(ChecksumError, match="its MD5 is"):
        download.download(bad, tmp_path, progress=False)


def test_interrupted_download_resumes_with_range(serve, tmp_path):
    server = serve({"blob.bin": PAYLOAD}, drop_after=100_000, drops=1)
    path = download.download(resource_for(server), tmp_path, progress=False, retries=1)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("blob.bin", None), ("blob.bin", "bytes=100000-")]


def test_interruption_keeps_the_part_and_the_next_call_resumes(serve, tmp_path):
    server = serve({"blob.bin": PAYLOAD}, drop_after=50_000, drops=1)
    with pytest.raises(DownloadError, match="interrupted .*run again to resume"):
        download.download(resource_for(server), tmp_path, progress=False, retries=0)
    assert (tmp_path / "blob.bin.part").stat().st_size == 50_000
    assert not (tmp_path / "blob.bin").exists()
    assert download.download(resource_for(server), tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("blob.bin", "bytes=50000-")


def test_server_ignoring_range_restarts_cleanly(serve, tmp_path, capsys):
    server = serve({"blob.bin": PAYLOAD}, drop_after=70_000, drops=1, ignore_range=True)
    path = download.download(resource_for(server), tmp_path, progress=False, retries=1)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[1] == ("blob.bin", "bytes=70000-")
    assert "does not resume downloads; starting again" in capsys.readouterr().out


def test_unreachable_server_names_dataset_url_and_folder(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Flickr8k_Dataset.zip"
    resource = Resource("Flickr8k images", url, "Flickr8k_Dataset.zip", None, None, True)
    with pytest.raises(DownloadError) as raised:
        download.download(resource, tmp_path / "flickr8k", dataset="flickr8k", progress=False,
                          timeout=5)
    message = str(raised.value)
    assert "for the flickr8k dataset" in message and url in message
    assert f"place it by hand in the folder {tmp_path / 'flickr8k'}" in message


def test_a_different_file_on_the_server_is_refused_early(serve, tmp_path):
    server = serve({"blob.bin": PAYLOAD})
    stale = Resource("test blob", server.url("blob.bin"), "blob.bin", len(PAYLOAD) + 1, None, False)
    with pytest.raises(DownloadError, match="announces 307,200 bytes, but blob.bin .* has 307,201"):
        download.download(stale, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_file_already_in_place_is_deleted(serve, tmp_path):
    server = serve({"blob.bin": PAYLOAD})
    (tmp_path / "blob.bin").write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(ChecksumError, match="its SHA-256 is .*The bad file was deleted"):
        download.download(resource_for(server), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == [] and server.requests == []


def test_http_error_is_a_download_error(serve, tmp_path):
    server = serve({})
    with pytest.raises(DownloadError, match="HTTP 404"):
        download.download(resource_for(server, "gone.zip"), tmp_path, progress=False)


def fake_disk(free):
    usage = collections.namedtuple("usage", "total used free")
    return lambda path: usage(10 * free, 9 * free, free)


def test_too_little_disk_fails_before_writing(serve, tmp_path, monkeypatch):
    server = serve({"blob.bin": PAYLOAD})
    monkeypatch.setattr(download.shutil, "disk_usage", fake_disk(500_000))
    target = tmp_path / "new"
    expected = r"needs 614.4 kB, 500.0 kB is free.*Nothing was written"
    with pytest.raises(DiskSpaceError, match=expected):
        download.download(resource_for(server, extract=True), target, progress=False)
    assert not target.exists() and server.requests == []
    with pytest.raises(DiskSpaceError):  # size unpublished: checked once the server tells it
        download.download(resource_for(server, size=False, extract=True), target, progress=False)
    assert not (target / "blob.bin.part").exists()


# --- unpacking -----------------------------------------------------------------------------

def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def make_tar(path, add):
    with tarfile.open(path, "w:gz") as bundle:
        add(bundle)
    return path


def add_file(bundle, name, data=b"data"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    bundle.addfile(info, io.BytesIO(data))


def test_zip_unpacks_and_the_archive_can_be_deleted(tmp_path):
    archive = make_zip(tmp_path / "pack.zip", {"Flicker8k_Dataset/a.jpg": b"jpeg",
                                               "notes.txt": b"hi",
                                               "__MACOSX/Flicker8k_Dataset/._a.jpg": b"finder"})
    target = tmp_path / "data"
    assert download.extract(archive, target, delete_archive=True) == target
    assert (target / "Flicker8k_Dataset" / "a.jpg").read_bytes() == b"jpeg"
    names = sorted(p.name for p in target.iterdir())
    assert names == [".pack.zip.unpacked", "Flicker8k_Dataset", "notes.txt"]
    assert not archive.exists()


def test_tar_gz_with_a_root_entry_unpacks(tmp_path):
    def add(bundle):
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        bundle.addfile(root)
        add_file(bundle, "./flickr30k-images/1.jpg", b"jpeg")

    download.extract(make_tar(tmp_path / "images.tar.gz", add), tmp_path / "data")
    assert (tmp_path / "data" / "flickr30k-images" / "1.jpg").read_bytes() == b"jpeg"


@pytest.mark.parametrize("member, problem", [
    ("../evil.txt", "has a '..' in its path"),
    ("Flicker8k_Dataset/../../evil.txt", "has a '..' in its path"),
    ("/tmp/evil.txt", "has an absolute path"),
    ("C:\\evil.txt", "has an absolute path"),
])
def test_zip_members_leaving_the_target_are_refused(tmp_path, member, problem):
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"ok", member: b"evil"})
    target = tmp_path / "deep" / "data"
    expected = re.escape(f"member {member!r} {problem}")
    with pytest.raises(UnsafeArchiveError, match=expected):
        download.extract(archive, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "deep" / "evil.txt").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as bundle:
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="member 'link' is a symbolic link"):
        download.extract(tmp_path / "link.zip", tmp_path / "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("kind, problem", [(tarfile.SYMTYPE, "is a symbolic link"),
                                           (tarfile.LNKTYPE, "is a hard link"),
                                           (tarfile.CHRTYPE, "is a device or other special file")])
def test_tar_links_and_devices_are_refused(tmp_path, kind, problem):
    def add(bundle):
        add_file(bundle, "fine.txt")
        special = tarfile.TarInfo("special")
        special.type, special.linkname = kind, "/etc/passwd"
        bundle.addfile(special)

    archive = make_tar(tmp_path / "bad.tar.gz", add)
    with pytest.raises(UnsafeArchiveError, match=f"member 'special' {problem}"):
        download.extract(archive, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_interrupted_extraction_is_not_taken_for_a_complete_one(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "pack.zip", {"a/1.txt": b"1", "a/2.txt": b"2"})
    target = tmp_path / "data"
    real_write = download._write_member
    calls = []

    def write_then_fail(member, open_entry, staging):
        calls.append(member)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the reader pressed Ctrl-C
        real_write(member, open_entry, staging)

    monkeypatch.setattr(download, "_write_member", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        download.extract(archive, target)
    assert list(target.iterdir()) == []  # neither files nor marker: nothing looks complete
    monkeypatch.setattr(download, "_write_member", real_write)
    download.extract(archive, target)
    assert (target / "a" / "2.txt").read_bytes() == b"2"


# --- fetch and load_dataset(download=True) -------------------------------------------------

def test_fetch_states_the_need_downloads_unpacks_and_skips_next_time(serve, tmp_path, monkeypatch,
                                                                     capsys):
    archive = make_zip(tmp_path / "toy.zip", {"toy/1.txt": b"1"}).read_bytes()
    server = serve({"toy.zip": archive})
    resource = Resource("toy", server.url("toy.zip"), "toy.zip", len(archive),
                        hashlib.sha256(archive).hexdigest(), True, provides=("toy/1.txt",))
    monkeypatch.setitem(download.RESOURCES, "toy", (resource,))
    folder = tmp_path / "toy-data"
    download.fetch("toy", folder, delete_archives=True, progress=False)
    assert (folder / "toy" / "1.txt").read_bytes() == b"1" and not (folder / "toy.zip").exists()
    assert f"toy: needs {len(archive) * 2} bytes in {folder}" in capsys.readouterr().out
    download.fetch("toy", folder, progress=False)
    assert len(server.requests) == 1 and "every file is in place" in capsys.readouterr().out
    (folder / "toy" / "1.txt").unlink()  # the marker stays, but the files are gone
    download.fetch("toy", folder, progress=False)
    assert len(server.requests) == 2 and (folder / "toy" / "1.txt").read_bytes() == b"1"
    monkeypatch.setattr(download.shutil, "disk_usage", fake_disk(10))
    with pytest.raises(DiskSpaceError, match="not enough disk space for toy"):
        download.fetch("toy", tmp_path / "elsewhere", progress=False)
    with pytest.raises(ValueError, match="no download is known for 'shapes'"):
        download.fetch("shapes", folder)


def test_load_flickr8k_with_download_from_a_local_mirror(serve, tmp_path, monkeypatch):
    from test_datasets import write_flickr8k

    source = write_flickr8k(tmp_path / "source")
    images = {f"Flicker8k_Dataset/{p.name}": p.read_bytes()
              for p in (source / "Flicker8k_Dataset").iterdir()}
    texts = {p.name: p.read_bytes() for p in source.glob("*.txt")}
    zips = {"Flickr8k_Dataset.zip": make_zip(tmp_path / "i.zip", images).read_bytes(),
            "Flickr8k_text.zip": make_zip(tmp_path / "t.zip", texts).read_bytes()}
    server = serve(zips)
    mirrored = tuple(Resource(r.name, server.url(r.filename), r.filename, None, None, True,
                              md5=hashlib.md5(zips[r.filename]).hexdigest(), provides=r.provides)
                     for r in download.RESOURCES["flickr8k"])
    monkeypatch.setitem(download.RESOURCES, "flickr8k", mirrored)
    with pytest.warns(datasets.DatasetWarning):
        data = datasets.load_dataset("flickr8k", tmp_path / "flickr8k", download=True)
    assert data.splits == {"train": 2, "val": 1, "test": 1}
    assert all(image.path.is_file() for image in data)
