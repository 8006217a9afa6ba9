"""The model store: import, verify, fetch over HTTP (resume, sha256, offline), delete; every
way of tampering with a bundle refused by verify, import and at load."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile

import nibabel as nib
import numpy as np
import pytest
from safetensors.numpy import save_file

from NeuroADLib.errors import EXIT_MODEL, ModelError, UsageError
from NeuroADLib.models import find_bundle, list_bundles, verify_bundle
from NeuroADLib.models.bundles import Bundle
from NeuroADLib.models.store import delete_bundle, fetch_bundle, import_bundle
from NeuroADLib.training.provenance import write_manifest


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROAD_MODELS", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture
def bundle_folder(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file({"w": np.arange(5000, dtype=np.float32)}, str(folder / "weights.safetensors"))
    write_manifest(folder, id="tiny-test", method="zscore", version="1")
    return folder


def zipped(folder, path):
    with zipfile.ZipFile(path, "w") as archive:
        for item in folder.iterdir():
            archive.write(item, f"{folder.name}/{item.name}")
    return path


def test_import_folder_then_it_is_found_first(store, bundle_folder):
    bundle = import_bundle(bundle_folder)
    assert bundle.folder == store / "tiny-test"
    assert list_bundles()[0].id == "tiny-test"
    assert find_bundle("zscore").id == "tiny-test"  # the store's bundle takes precedence
    verify_bundle(bundle)


def test_import_refuses_a_corrupt_bundle_and_leaves_the_store_clean(store, bundle_folder):
    (bundle_folder / "weights.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(ModelError, match="corrupt"):
        import_bundle(bundle_folder)
    assert not (store / "tiny-test").exists()
    assert [p.name for p in store.iterdir()] == []


def test_import_zip_and_refuse_unsafe_paths(store, bundle_folder, tmp_path):
    assert import_bundle(zipped(bundle_folder, tmp_path / "b.zip")).id == "tiny-test"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.txt", "x")
    with pytest.raises(ModelError, match="unsafe"):
        import_bundle(evil)
    assert not (tmp_path / "escape.txt").exists()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring 'Range: bytes=N-'."""

    payload = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        data = self.payload
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        return None


@pytest.fixture
def server(bundle_folder, tmp_path):
    RangeHandler.payload = zipped(bundle_folder, tmp_path / "served.zip").read_bytes()
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/tiny.zip"
    httpd.shutdown()


def test_fetch_verifies_and_resumes(store, server):
    digest = hashlib.sha256(RangeHandler.payload).hexdigest()
    partial = store / ".downloads" / f"{digest}.zip.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(RangeHandler.payload[:100])  # an interrupted earlier download
    bundle = fetch_bundle(server, digest)
    assert bundle.id == "tiny-test" and not partial.exists()
    verify_bundle(bundle)


def test_fetch_with_a_wrong_hash_installs_nothing(store, server):
    with pytest.raises(ModelError, match="expected"):
        fetch_bundle(server, "0" * 64)
    assert not (store / "tiny-test").exists()
    assert list((store / ".downloads").iterdir()) == []


def test_fetch_offline_says_what_to_do(store):
    with pytest.raises(ModelError, match="models import"):
        fetch_bundle("http://127.0.0.1:9/none.zip", "0" * 64, timeout=5)


def test_delete(store, bundle_folder):
    import_bundle(bundle_folder)
    delete_bundle("tiny-test")
    assert not (store / "tiny-test").exists()
    with pytest.raises(ModelError, match="No model"):
        delete_bundle("tiny-test")


def test_a_bundle_of_stages_verifies_the_files_of_its_sub_folders(tmp_path):
    folder = tmp_path / "staged"
    (folder / "transformer" / "checkpoint").mkdir(parents=True)
    save_file({"w": np.ones(10, np.float32)}, str(folder / "transformer" / "w.safetensors"))
    save_file({"w": np.ones(10, np.float32)}, str(folder / "transformer" / "checkpoint" /
                                                  "state.safetensors"))
    write_manifest(folder, id="staged", method="cadd", version="1")
    bundle = Bundle(folder, json.loads((folder / "manifest.json").read_text()))
    assert set(bundle.manifest["files"]) == {"transformer/w.safetensors"}
    verify_bundle(bundle)
    save_file({"w": np.zeros(10, np.float32)}, str(folder / "transformer" / "w.safetensors"))
    with pytest.raises(ModelError, match="transformer/w.safetensors is corrupt"):
        verify_bundle(bundle)


def tamper(folder, how: str) -> str:
    """Damage a bundle folder one way; returns words the refusal must contain."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    weights = folder / "weights.safetensors"
    if how == "changed weight":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # same size, one flipped bit pattern
        weights.write_bytes(bytes(data))
        return "weights.safetensors is corrupt"
    if how == "missing file":
        weights.unlink()
        return "weights.safetensors is missing"
    if how == "edited hash":
        manifest["files"]["weights.safetensors"]["sha256"] = "ab" * 32
        words = "weights.safetensors is corrupt"
    elif how == "dropped from manifest":
        del manifest["files"]["weights.safetensors"]
        words = "weights.safetensors is not listed in its manifest"
    elif how == "added file":
        (folder / "extra.safetensors").write_bytes(b"x")
        return "extra.safetensors is not listed"
    elif how == "path escaping the bundle":
        manifest["files"]["../outside.bin"] = {"bytes": 1, "sha256": "ab" * 32}
        words = "a path outside the bundle"
    elif how == "id escaping the store":
        manifest["id"] = "../../escaped"
        words = "is not a plain name"
    else:  # no files listed at all
        manifest["files"] = {}
        words = "lists no files"
    manifest_path.write_text(json.dumps(manifest))
    return words


TAMPERING = ["changed weight", "missing file", "edited hash", "dropped from manifest",
             "added file", "path escaping the bundle", "id escaping the store", "no files listed"]


@pytest.fixture
def two_files(tmp_path):
    """A bundle of two weight files, so that one can be dropped from its manifest."""
    folder = tmp_path / "two"
    folder.mkdir()
    save_file({"w": np.arange(5000, dtype=np.float32)}, str(folder / "weights.safetensors"))
    save_file({"b": np.ones(7, dtype=np.float32)}, str(folder / "bias.safetensors"))
    write_manifest(folder, id="two-test", method="zscore", version="1")
    return folder


@pytest.mark.parametrize("how", TAMPERING)
def test_a_tampered_bundle_is_refused_by_verify_and_import(store, two_files, tmp_path, how):
    words = tamper(two_files, how)
    manifest = json.loads((two_files / "manifest.json").read_text())
    with pytest.raises(ModelError, match=re.escape(words)):
        verify_bundle(Bundle(two_files, manifest))
    with pytest.raises(ModelError, match=re.escape(words)):
        import_bundle(two_files)
    with pytest.raises(ModelError, match=re.escape(words)):
        import_bundle(zipped(two_files, tmp_path / "two.zip"))
    assert [p.name for p in store.iterdir()] == []
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/escape.txt", "..\\escape.txt",
                                    "C:/escape.txt", "two/../../escape.txt", "link"])
def test_zip_slip_is_refused_whole(store, two_files, tmp_path, member):
    evil = zipped(two_files, tmp_path / "evil.zip")
    with zipfile.ZipFile(evil, "a") as archive:
        if member == "link":
            info = zipfile.ZipInfo("two/link")
            info.external_attr = (0o120777 << 16)  # a symbolic link to outside
            archive.writestr(info, "/etc/passwd")
        else:
            archive.writestr(member, "x")
    with pytest.raises(ModelError, match="unsafe path"):
        import_bundle(evil)
    assert not (tmp_path / "escape.txt").exists() and not (store.parent / "escape.txt").exists()
    assert [p.name for p in store.iterdir()] == []


def test_a_damaged_zip_is_refused(store, two_files, tmp_path):
    archive = zipped(two_files, tmp_path / "b.zip")
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF  # inside the first member's data: its CRC fails on extraction
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        import_bundle(archive)
    assert [p.name for p in store.iterdir()] == []


def test_a_symbolic_link_in_a_bundle_folder_is_refused(store, two_files, tmp_path):
    (tmp_path / "secret").write_text("x")
    (two_files / "link.safetensors").symlink_to(tmp_path / "secret")
    with pytest.raises(ModelError, match="symbolic link"):
        import_bundle(two_files)


def neuroad(*args: str, store) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NEUROAD_MODELS": str(store)})


@pytest.mark.parametrize("how", ["edited hash", "dropped from manifest"])
def test_the_command_line_refuses_a_tampered_bundle_to_verify_import_and_run(
        store, two_files, tmp_path, how):
    import_bundle(two_files)
    installed = store / "two-test"
    words = tamper(installed, how)
    verify = neuroad("models", "verify", store=store)
    assert verify.returncode == EXIT_MODEL
    assert f"{installed}  REFUSED" in verify.stdout and words in verify.stdout
    assert "bundled/zscore-ixi-2mm  verified" in verify.stdout  # the others are still checked
    copy = tmp_path / "copy"
    shutil.copytree(installed, copy)
    imported = neuroad("models", "import", str(copy), store=store)
    assert imported.returncode == EXIT_MODEL and words in imported.stderr
    scan = tmp_path / "scan.nii.gz"  # head-sized noise: passes the input guards
    nib.save(nib.Nifti1Image(np.random.rand(40, 40, 40).astype(np.float32),
                             np.diag([4.0, 4.0, 4.0, 1.0])), scan)
    run = neuroad("run", str(scan), "--age", "50", "--sex", "F", "--method", "zscore",
                  "--out", str(tmp_path / "out"), store=store)
    assert run.returncode == EXIT_MODEL and words in run.stderr
    assert not (tmp_path / "out").exists()


def test_verify_reports_an_unreadable_manifest(store):
    (store / "broken").mkdir(parents=True)
    (store / "broken" / "manifest.json").write_text("{not json")
    result = neuroad("models", "verify", store=store)
    assert result.returncode == EXIT_MODEL and "not a readable manifest" in result.stdout


def test_delete_refuses_an_id_outside_the_store(store, tmp_path):
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "manifest.json").write_text("{}")
    with pytest.raises(ModelError, match="not a plain name"):
        delete_bundle("../victim")
    assert (tmp_path / "victim" / "manifest.json").exists()


@pytest.mark.parametrize("url, digest, words", [
    ("notaurl", "0" * 64, "is not an http(s) URL"),
    ("http://127.0.0.1:9/none.zip", "abc", "is not a sha256"),
])
def test_fetch_refuses_a_malformed_url_or_hash_before_any_download(store, url, digest, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        fetch_bundle(url, digest)
    assert not store.exists()
