"""The model store: import, verify, fetch over HTTP (resume, sha256, offline), delete."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from NeuroADLib.errors import ModelError
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
