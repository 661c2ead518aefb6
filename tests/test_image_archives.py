"""An image archive from a received bundle is loaded as the image its provenance records
and tagged as it records, never with the names the archive carries (they could repoint
any image the receiver holds), with the real engine and a small real image."""

import json
import tarfile

import pytest

from orchestrator.errors import BenchError
from orchestrator.workers.docker import archive_image_ids

pytestmark = pytest.mark.docker
VICTIM = "umlip-0123d-test/victim:1"


def renamed(archive, out, names):
    """The archive with its manifest.json naming `names` (as a hostile bundle would)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json":
                import io

                manifest = json.load(data)
                manifest[0]["RepoTags"] = names
                raw = json.dumps(manifest).encode()
                member.size, data = len(raw), io.BytesIO(raw)
            dst.addfile(member, data)


def test_a_bundle_archive_never_retags_the_receivers_images(engine, manifest, tmp_path):
    small, other = manifest["base_images"]["3.11"], manifest["base_images"].get("3.13")
    if other is None or engine.image_id(other) is None:
        pytest.skip("needs two base images")
    small_id, other_id = engine.image_id(small), engine.image_id(other)
    engine.save_image(small, tmp_path / "saved.tar")
    renamed(tmp_path / "saved.tar", tmp_path / "hostile.tar", [VICTIM, other])
    assert archive_image_ids(tmp_path / "hostile.tar") == [small_id]
    engine.client.images.get(other_id).tag(*VICTIM.split(":"))
    loaded = "umlip-0123d/loaded-from-a-bundle:test"
    try:
        engine.load_image(tmp_path / "hostile.tar", small_id, loaded)
        assert engine.image_id(VICTIM) == other_id and engine.image_id(other) == other_id  # untouched
        assert engine.image_id(loaded) == small_id  # only the recorded tag, on the recorded image
        with pytest.raises(BenchError, match=f"holds image {small_id}, not the recorded {other_id}: not loaded"):
            engine.load_image(tmp_path / "hostile.tar", other_id, "umlip-0123d/other:test")
        with pytest.raises(BenchError, match=f"{VICTIM} already names image {other_id} here"):
            engine.load_image(tmp_path / "hostile.tar", small_id, VICTIM)
        assert engine.image_id(VICTIM) == other_id
    finally:
        engine.remove_image(VICTIM)
        engine.remove_image(loaded)
