"""Weight files are found in the documented order and verified by digest, never downloaded."""

from __future__ import annotations

import hashlib
from unittest import mock

import pytest

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.weights.files import KNOWN_WEIGHTS, MetricUnavailable, find_weights, sha256_of


@pytest.fixture
def empty_search_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TDKSTAIN_WEIGHTS", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_search_order_explicit_env_cache_hub(empty_search_path):
    tmp = empty_search_path
    places = {
        "hub": tmp / "torch" / "hub" / "checkpoints",
        "cache": tmp / "home" / ".cache" / "tdkstain" / "weights",
        "env": tmp / "env",
        "explicit": tmp / "explicit",
    }
    with mock.patch("tdkstain.weights.files._in_wheel", return_value=None):
        for name in ("hub", "cache", "env"):  # each new place must win over the previous ones
            places[name].mkdir(parents=True)
            (places[name] / "vgg16-397923af.pth").write_bytes(name.encode())
            found = find_weights("vgg16", allow_noncanonical=True)
            assert found.path == places[name] / "vgg16-397923af.pth"
            assert not found.canonical
        places["explicit"].mkdir()
        (places["explicit"] / "my_vgg.pth").write_bytes(b"explicit")
        assert find_weights("vgg16", places["explicit"] / "my_vgg.pth", allow_noncanonical=True).path.name == "my_vgg.pth"
        # A folder given explicitly is searched for the canonical file name.
        assert find_weights("vgg16", places["env"], allow_noncanonical=True).path.parent == places["env"]


def test_digest_checked_and_torchvision_prefix_rule(empty_search_path):
    path = empty_search_path / "f.pth"
    path.write_bytes(b"some bytes")
    digest = hashlib.sha256(b"some bytes").hexdigest()
    assert sha256_of(path) == digest
    with pytest.raises(TdkstainError, match=r"f\.pth: not the published .*sha256 " + digest):
        find_weights("lpips_vgg", path)
    # torchvision files are checked by the 8-hex prefix in their names.
    spec = KNOWN_WEIGHTS["vgg16"]
    assert spec.digest_ok("397923af" + "0" * 56) and not spec.digest_ok("0" * 64)


def test_unknown_name_and_missing_explicit_file(empty_search_path):
    with pytest.raises(TdkstainError, match="unknown weight file 'resnet'"):
        find_weights("resnet")
    with pytest.raises(MetricUnavailable, match=r"missing\.pt: no such file"):
        find_weights("dists", empty_search_path / "missing.pt")


def test_wheel_file_is_the_last_resort(empty_search_path):
    try:
        from_wheel = find_weights("dists")
    except MetricUnavailable:
        pytest.skip("DISTS_pytorch wheel not installed")
    assert from_wheel.canonical and "DISTS_pytorch" in str(from_wheel.path)
    # The same published file in $TDKSTAIN_WEIGHTS is preferred to the wheel's.
    (empty_search_path / "env").mkdir()
    copy = empty_search_path / "env" / "weights.pt"
    copy.write_bytes(from_wheel.path.read_bytes())
    found = find_weights("dists")
    assert found.path == copy and found.canonical
