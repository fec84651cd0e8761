"""Presets with their published weights (``"pretrained": true``), offline: from a seeded weights cache,
or a clear error naming the file to place there."""

from __future__ import annotations

import hashlib
import io

import torch

from cvops.blobs import BlobStore
from tests.e2e.conftest import Live
from tests.e2e.helpers import API
from tests.e2e.server import request


def _preset(live: Live, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    return request(live.url, "POST", f"{API}/models/presets?wait=true", body, live.admin, timeout=600)  # type: ignore[no-any-return]


def test_pretrained_offline_without_cache_names_the_file(live: Live) -> None:
    status, body = _preset(live, {"preset": "efficientnet_b0", "name": "effnet-pre", "pretrained": True})
    assert status == 422, body
    message = body["error"]["message"]  # type: ignore[index]
    assert "efficientnet_b0_rwightman-7f5810bc.pth" in message
    assert str(live.server.data_dir / "weights") in message and "CVOPS_WEIGHTS_CACHE" in message


def test_pretrained_for_a_preset_without_published_weights_is_422(live: Live) -> None:
    status, body = _preset(live, {"preset": "tiny_cnn", "pretrained": True})
    assert status == 422, body
    assert "no published pre-trained weights" in body["error"]["message"]  # type: ignore[index]


def test_pretrained_from_a_seeded_cache_records_the_sha256(live: Live) -> None:
    import torchvision

    seeded = torchvision.models.mobilenet_v3_small(weights=None)  # stands in for the published file
    buf = io.BytesIO()
    torch.save(seeded.state_dict(), buf)
    cache = live.server.data_dir / "weights"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "mobilenet_v3_small-047dcff4.pth").write_bytes(buf.getvalue())

    status, rec = _preset(
        live, {"preset": "mobilenet_v3_small", "name": "mnv3-pre", "pretrained": True, "num_classes": 3}
    )
    assert status == 200, rec
    assert rec["status"] == "ready" and rec["pretrained"] is True
    assert rec["pretrained_weights"] == {
        "file": "mobilenet_v3_small-047dcff4.pth",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
    }
    form = torch.load(
        BlobStore(live.server.data_dir / "blobs").path(rec["onnx"]["torch_sha256"]),  # type: ignore[index]
        weights_only=True,
    )
    # the backbone is the published one; the 3-class head is new
    assert torch.equal(form["features.0.0.weight"], seeded.state_dict()["features.0.0.weight"])
    assert form["classifier.3.weight"].shape[0] == 3
