"""Download and unpack the real caption datasets: resumable, checked, and safe to unpack.

Only the standard library talks to the network (``urllib``). Every failure says what to do next,
including where to place a file by hand on a machine that has no internet access.

* :data:`RESOURCES` lists, per dataset, the files to fetch, with their published sizes and
  checksums where a trustworthy source exists (the source is named beside each value).
* :func:`download` fetches one file into a folder: it checks the free disk space first, resumes
  an interrupted transfer, verifies the checksum and only then moves the file into place.
* :func:`extract` unpacks a zip or tar archive, refusing members that would land outside the
  target folder, links and device files.
* :func:`fetch` does both for every file of a dataset.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from typing import IO, NoReturn

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0
RETRIES = 3


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message says how to place it by hand."""


class ChecksumError(DownloadError):
    """A downloaded (or already present) file is not the published one."""


class DiskSpaceError(OSError):
    """Not enough free disk space for a download and its unpacked files."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder, or is a link or device."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One downloadable file.

    ``name``: what it holds, for messages; ``size``: bytes; ``sha256``/``md5``: published
    checksums (``None`` where no trustworthy value was found: the file is then kept unverified
    and its SHA-256 printed); ``extract``: whether it is an archive to unpack; ``provides``: the
    paths it yields in the dataset folder once unpacked, so a folder that holds them already
    (placed there by hand) is not downloaded again.
    """

    name: str
    url: str
    filename: str
    size: int | None
    sha256: str | None
    extract: bool
    md5: str | None = None
    provides: tuple[str, ...] = ()


# Karpathy's splits of Flickr8k, Flickr30k and COCO: dataset_flickr8k.json, dataset_flickr30k.json
# and dataset_coco.json at the top of the archive. Size and SHA-256 as recorded by TensorFlow
# Datasets (github.com/tensorflow/datasets, tensorflow_datasets/url_checksums/coco_captions.txt);
# other public projects record the same SHA-256.
KARPATHY_SPLITS = Resource(
    name="Karpathy's caption splits (Flickr8k, Flickr30k, COCO)",
    url="https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    filename="caption_datasets.zip",
    size=36_745_453,
    sha256="4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
    extract=True,
    provides=("dataset_flickr8k.json", "dataset_flickr30k.json", "dataset_coco.json"),
)

# Flickr8k from the mirror most tutorials use. No published size or SHA-256 was found; the MD5
# values are those of mlverse/torchvision (R/dataset-flickr.R), also used by an independent CMake
# download script. The image archive unpacks to "Flicker8k_Dataset/" (sic) plus a "__MACOSX/"
# folder of Finder metadata, which extract() leaves out; the text archive holds its .txt files at
# the top level.
_FLICKR8K_IMAGES = Resource(
    name="Flickr8k images",
    url="https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
    filename="Flickr8k_Dataset.zip",
    size=None,
    sha256=None,
    md5="f18a1e2920de5bd84dae7cf08ec78978",
    extract=True,
    provides=("Flicker8k_Dataset",),
)
_FLICKR8K_TEXT = Resource(
    name="Flickr8k captions and split lists",
    url="https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
    filename="Flickr8k_text.zip",
    size=None,
    sha256=None,
    md5="bf6c1abcb8e4a833b7f922104de18627",
    extract=True,
    provides=("Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt",
              "Flickr_8k.testImages.txt"),
)

# COCO 2014. Sizes and SHA-256 as recorded by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/coco2014.txt and coco_captions.txt agree); the sizes match
# the Content-Length that wget logs in many public notebooks.
_COCO_TRAIN = Resource(
    name="COCO 2014 training images",
    url="http://images.cocodataset.org/zips/train2014.zip",
    filename="train2014.zip",
    size=13_510_573_713,
    sha256="ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
    extract=True,
    provides=("train2014",),
)
_COCO_VAL = Resource(
    name="COCO 2014 validation images",
    url="http://images.cocodataset.org/zips/val2014.zip",
    filename="val2014.zip",
    size=6_645_013_297,
    sha256="fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
    extract=True,
    provides=("val2014",),
)
_COCO_ANNOTATIONS = Resource(
    name="COCO 2014 annotations (official train/val captions)",
    url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    filename="annotations_trainval2014.zip",
    size=252_872_794,
    sha256="031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
    extract=True,
    provides=("annotations/captions_train2014.json", "annotations/captions_val2014.json"),
)

#: The files of each dataset. Flickr30k's images are given out only through a request form
#: (https://shannon.cs.illinois.edu/DenotationGraph/), so only its captions are listed here.
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "flickr8k": (_FLICKR8K_TEXT, _FLICKR8K_IMAGES),
    "flickr30k": (KARPATHY_SPLITS,),
    "coco": (KARPATHY_SPLITS, _COCO_ANNOTATIONS, _COCO_VAL, _COCO_TRAIN),
}


def fetch(dataset_name: str, folder: str | os.PathLike, *, delete_archives: bool = False,
          progress: bool = True) -> pathlib.Path:
    """Download and unpack every file of ``dataset_name`` into ``folder``; return ``folder``.

    Files whose contents are in place already are skipped. The total disk space needed is stated
    (and checked) before anything is written. ``delete_archives`` removes each archive once it
    has been unpacked.
    """
    if dataset_name not in RESOURCES:
        known = ", ".join(sorted(RESOURCES))
        raise ValueError(f"no download is known for {dataset_name!r}; known: {known}")
    folder = pathlib.Path(folder)
    pending = [r for r in RESOURCES[dataset_name] if not _in_place(r, folder)]
    if not pending:
        print(f"{dataset_name}: every file is in place in {folder}")
        return folder
    _check_total_space(dataset_name, pending, folder)
    for resource in pending:
        archive = download(resource, folder, progress=progress, dataset=dataset_name)
        if resource.extract:
            # Its files are missing, so a marker from an earlier extraction no longer holds.
            _extraction_marker(resource.filename, folder).unlink(missing_ok=True)
            extract(archive, folder, delete_archive=delete_archives)
    return folder


def download(resource: Resource, folder: str | os.PathLike, *, progress: bool = True,
             dataset: str | None = None, timeout: float = TIMEOUT_SECONDS,
             retries: int = RETRIES) -> pathlib.Path:
    """Download ``resource`` into ``folder`` and return the path of the verified file.

    The transfer goes to ``<filename>.part`` and resumes with an HTTP ``Range`` request after an
    interruption (up to ``retries`` times per call, and again on the next call); a server that
    ignores ``Range`` makes it start again from the beginning. The finished file is checked
    against the published size and checksum, then renamed into place, so a file under its final
    name is always complete. A file already in place is verified and kept. ``dataset`` names the
    dataset in error messages.
    """
    folder = pathlib.Path(folder)
    target = folder / resource.filename
    if target.is_file():
        _verify(target, resource, progress)
        print(f"{resource.filename}: already downloaded in {folder}")
        return target
    partial = folder / f"{resource.filename}.part"
    if resource.size is not None:
        _check_space(resource, folder, _size_of(partial), resource.size)
    folder.mkdir(parents=True, exist_ok=True)
    _transfer(resource, partial, _Context(dataset or resource.name, folder, progress, timeout),
              retries)
    _verify(partial, resource, progress)
    os.replace(partial, target)
    return target


def extract(archive: str | os.PathLike, target: str | os.PathLike, *,
            delete_archive: bool = False) -> pathlib.Path:
    """Unpack a zip or tar (``.tar``, ``.tar.gz``...) archive into ``target``; return ``target``.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    symbolic and hard links and device files raise :class:`UnsafeArchiveError`. Members go to a
    hidden staging folder inside ``target`` and are moved into place at the end, after which a
    marker file records the extraction as complete; an interrupted extraction is therefore
    redone on the next call, never taken for a finished one. macOS metadata (``__MACOSX/``) is
    left out.
    """
    archive, target = pathlib.Path(archive), pathlib.Path(target)
    marker = _extraction_marker(archive.name, target)
    if marker.exists():
        print(f"{archive.name}: already unpacked in {target}")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = _checked_members(archive, bundle.infolist(), _zip_member)
            _unpack(members, bundle.open, archive.name, target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            members = _checked_members(archive, bundle.getmembers(), _tar_member)
            _unpack(members, bundle.extractfile, archive.name, target)
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")
    if delete_archive and archive.exists():
        archive.unlink()
    return target


# --- downloading ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Context:
    """What every step of one download needs to know for its messages and limits."""

    dataset: str
    folder: pathlib.Path
    progress: bool
    timeout: float


class _Interrupted(Exception):
    """The connection ended before the whole file arrived; the partial file is kept."""


def _transfer(resource: Resource, partial: pathlib.Path, context: _Context, retries: int) -> None:
    for attempt in range(retries + 1):
        offset = _size_of(partial)
        if resource.size is not None and offset == resource.size:
            return  # an earlier run got every byte but stopped before the check
        if resource.size is not None and offset > resource.size:
            partial.unlink()
            offset = 0
        try:
            _transfer_once(resource, partial, offset, context)
            return
        except _Interrupted as error:
            if attempt == retries:
                raise DownloadError(
                    f"the download of {resource.filename} for {context.dataset} from "
                    f"{resource.url} was interrupted ({error}); the {_size_of(partial):,} bytes "
                    f"received are kept in {partial}: run again to resume") from None
            print(f"{resource.filename}: connection lost ({error}); resuming")


def _transfer_once(resource: Resource, partial: pathlib.Path, offset: int,
                   context: _Context) -> None:
    """One HTTP request: append to ``partial`` from ``offset`` (or start over)."""
    from tqdm.auto import tqdm

    headers = {"User-Agent": "image-understanding-book"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(resource.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=context.timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part is not a prefix of this file: start over
            partial.unlink()
            raise _Interrupted("the server refused to resume; starting again") from None
        raise _unreachable(resource, context, f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _unreachable(resource, context, _reason(error)) from None
    with response:
        if offset and not _resumes_at(response, offset):
            print(f"{resource.filename}: the server does not resume downloads; starting again")
            offset = 0
        total = _announced_total(response, offset)
        _check_announced_size(resource, total, partial, context)
        if resource.size is None and total is not None:
            _check_space(resource, context.folder, offset, total)
        with open(partial, "ab" if offset else "wb") as sink, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=resource.filename, disable=not context.progress) as bar:
            received = _copy_stream(response, sink, bar, offset)
    if total is not None and received < total:
        # http.client ends a body that stops short at EOF without an error: count the bytes.
        raise _Interrupted(f"{received:,} of {total:,} bytes")


def _copy_stream(response, sink: IO[bytes], bar, received: int) -> int:
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise _Interrupted(f"{received:,} bytes in: {_reason(error)}") from None
        if not chunk:
            return received
        sink.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))


def _resumes_at(response, offset: int) -> bool:
    """Whether the server answered a Range request with the bytes from ``offset`` on."""
    content_range = response.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    return response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _announced_total(response, offset: int) -> int | None:
    """The full size of the file, as the response headers tell it (``None`` if they don't)."""
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (offset if response.status == 206 else 0)


def _check_announced_size(resource: Resource, total: int | None, partial: pathlib.Path,
                          context: _Context) -> None:
    if resource.size is not None and total is not None and total != resource.size:
        partial.unlink(missing_ok=True)  # a part of some other file is of no use
        raise DownloadError(
            f"{resource.url} announces {total:,} bytes, but {resource.filename} of "
            f"{context.dataset} has {resource.size:,}: the file on the server is not the "
            "published one. Nothing was kept.")


def _unreachable(resource: Resource, context: _Context, reason: str) -> DownloadError:
    return DownloadError(
        f"could not download {resource.filename} ({resource.name}) for the {context.dataset} "
        f"dataset from {resource.url}: {reason}.\nOn a machine without internet access, download "
        f"it elsewhere and place it by hand in the folder {context.folder} (as "
        f"{context.folder / resource.filename}), then run again.")


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return str(reason) or type(error).__name__


# --- verification --------------------------------------------------------------------------

def _verify(path: pathlib.Path, resource: Resource, progress: bool) -> None:
    """Check size and checksum; a file that fails is deleted and ChecksumError raised."""
    size = path.stat().st_size
    if resource.size is not None and size != resource.size:
        _reject(path, resource, "size", f"{resource.size:,} bytes", f"{size:,} bytes")
    sha256, md5 = _digests(path, resource.filename, progress)
    if resource.sha256 is not None and sha256 != resource.sha256:
        _reject(path, resource, "SHA-256", resource.sha256, sha256)
    if resource.md5 is not None and md5 != resource.md5:
        _reject(path, resource, "MD5", resource.md5, md5)
    if resource.sha256 is None and resource.md5 is None:
        print(f"{resource.filename}: SHA-256 {sha256}. It could NOT be verified: no trustworthy "
              "published checksum is known for this file.")
    elif resource.sha256 is None:
        print(f"{resource.filename}: verified by its published MD5; its SHA-256 is {sha256}")


def _reject(path: pathlib.Path, resource: Resource, what: str, expected: str,
            actual: str) -> NoReturn:
    path.unlink()
    raise ChecksumError(
        f"{resource.filename} is not the published file: its {what} is {actual}, expected "
        f"{expected}. The bad file was deleted; run again to download it afresh.")


def _digests(path: pathlib.Path, label: str, progress: bool) -> tuple[str, str]:
    """SHA-256 and MD5 of a file, read once."""
    from tqdm.auto import tqdm

    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as source, tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"checking {label}", disable=not progress) as bar:
        while chunk := source.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
            bar.update(len(chunk))
    return sha256.hexdigest(), md5.hexdigest()


# --- disk space ----------------------------------------------------------------------------

def _check_space(resource: Resource, folder: pathlib.Path, have: int, size: int) -> None:
    """Fail before writing when the rest of the download (and its unpacking) will not fit."""
    needed = _bytes_needed(resource, have, size)
    free = shutil.disk_usage(_existing_parent(folder)).free
    print(f"{resource.filename}: needs {_human(needed)}"
          f"{' (archive and unpacked files)' if resource.extract else ''}, {_human(free)} free "
          f"in {folder}")
    if needed > free:
        raise DiskSpaceError(
            f"not enough disk space for {resource.filename} in {folder}: it needs "
            f"{_human(needed)}, {_human(free)} is free. Free some space or choose another "
            "folder (BOOK_DATA or the root argument). Nothing was written.")


def _check_total_space(dataset_name: str, resources: Iterable[Resource],
                       folder: pathlib.Path) -> None:
    known = [r for r in resources if r.size is not None]
    unknown = [r.filename for r in resources if r.size is None]
    needed = sum(_bytes_needed(r, _size_of(folder / f"{r.filename}.part"), r.size) for r in known)
    free = shutil.disk_usage(_existing_parent(folder)).free
    need = _human(needed) if known else "an amount not published in advance"
    if unknown:
        need += f" plus room for {', '.join(unknown)} (checked as each download starts)"
    print(f"{dataset_name}: needs {need} in {folder}, {_human(free)} free")
    if needed > free:
        raise DiskSpaceError(
            f"not enough disk space for {dataset_name} in {folder}: it needs {need}, "
            f"{_human(free)} is free. Free some space or choose another folder (BOOK_DATA or the "
            "root argument). Nothing was written.")


def _bytes_needed(resource: Resource, have: int, size: int) -> int:
    # An archive's unpacked files take about as much room again (JPEGs hardly compress).
    return size - have + (size if resource.extract else 0)


def _existing_parent(folder: pathlib.Path) -> pathlib.Path:
    folder = folder.absolute()
    while not folder.exists():
        folder = folder.parent
    return folder


def _size_of(path: pathlib.Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _human(count: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def _in_place(resource: Resource, folder: pathlib.Path) -> bool:
    """Whether the files a resource yields are in ``folder`` already."""
    if resource.provides:
        return all((folder / path).exists() for path in resource.provides)
    if resource.extract:
        return _extraction_marker(resource.filename, folder).exists()
    return (folder / resource.filename).is_file()


# --- safe extraction -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Member:
    """An archive member that passed the checks: where it goes and whether it is a folder."""

    path: pathlib.PurePosixPath
    is_dir: bool
    entry: object  # the ZipInfo or TarInfo to read it from


def _checked_members(archive: pathlib.Path, entries, describe: Callable) -> list[_Member]:
    """The members worth unpacking; raises UnsafeArchiveError before anything is written."""
    members = []
    for entry in entries:
        name, is_dir, problem = describe(entry)
        path = pathlib.PurePosixPath(name.replace("\\", "/"))
        problem = problem or _path_problem(name, path, is_dir)
        if problem:
            raise UnsafeArchiveError(
                f"refusing to unpack {archive.name}: member {name!r} {problem}. Nothing was "
                "extracted.")
        # "." (the archive's own root) needs no folder; __MACOSX holds Finder metadata only.
        if path.parts and path.parts[0] != "__MACOSX":
            members.append(_Member(path, is_dir, entry))
    return members


def _zip_member(info: zipfile.ZipInfo) -> tuple[str, bool, str | None]:
    mode = info.external_attr >> 16  # Unix file mode; its type bits are often left at 0
    if stat.S_ISLNK(mode):
        return info.filename, False, "is a symbolic link"
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return info.filename, False, "is a device or other special file"
    return info.filename, info.is_dir(), None


def _tar_member(info: tarfile.TarInfo) -> tuple[str, bool, str | None]:
    if info.issym():
        return info.name, False, "is a symbolic link"
    if info.islnk():
        return info.name, False, "is a hard link"
    if not (info.isfile() or info.isdir()):
        return info.name, False, "is a device or other special file"
    return info.name, info.isdir(), None


def _path_problem(name: str, path: pathlib.PurePosixPath, is_dir: bool) -> str | None:
    """Why a member's path is unsafe to join to the target folder, or None."""
    if path.is_absolute() or pathlib.PureWindowsPath(name).drive:
        return "has an absolute path"
    if ".." in path.parts:
        return "has a '..' in its path, which could leave the target folder"
    if not path.parts and not is_dir:
        return "is a file without a name"
    return None


def _unpack(members: list[_Member], open_entry: Callable, archive_name: str,
            target: pathlib.Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob(f".extracting-{archive_name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted extraction
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".extracting-{archive_name}-", dir=target))
    try:
        for member in members:
            _write_member(member, open_entry, staging)
        _move_contents(staging, target)
        _extraction_marker(archive_name, target).write_text("complete\n", encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_member(member: _Member, open_entry: Callable, staging: pathlib.Path) -> None:
    destination = staging.joinpath(*member.path.parts)
    if member.is_dir:
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open_entry(member.entry) as source, open(destination, "wb") as sink:
        shutil.copyfileobj(source, sink, CHUNK_BYTES)


def _move_contents(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Move everything in ``source`` into ``destination``, merging folders that exist."""
    for entry in source.iterdir():
        goal = destination / entry.name
        if entry.is_dir() and goal.is_dir():
            _move_contents(entry, goal)
        else:
            os.replace(entry, goal)


def _extraction_marker(archive_name: str, target: pathlib.Path) -> pathlib.Path:
    return target / f".{archive_name}.unpacked"
