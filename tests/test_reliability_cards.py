"""Model cards are checked before they are trusted, and broken weights are refused (tdkstain.weights.validation).

Class 1 (a file's metadata used before it is checked): a card nested 100,000
deep, ``kwargs`` that is a string, an ``mpp`` of "abc" or [0.5], a header
larger than the cap or than the file, a 1 MB file whose card claims a huge
network, a ``.pth`` whose tensors claim more data than the file holds. Each
gives a TdkstainError naming the file, and no large allocation happens; the
property-based tests (hypothesis) vary the card field by field and as random
JSON and require a checked card or a TdkstainError, never another exception.

Class 7, weights part (silent garbage): NaN or inf weights, in our
safetensors or in the authors' ``.pth``, are refused instead of staining a
black image with exit status 0.
"""

from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch.nn.modules import module as torch_module

from tdkstain.cli import main
from tdkstain.data.images import write_png
from tdkstain.models import NETWORKS, ResnetGenerator
from tdkstain.models.layers import init_weights
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import MAX_CARD_BYTES, MAX_TILE_SIDE
from tdkstain.weights import (
    WEIGHTS_FORMAT,
    load_generator,
    load_generator_with_card,
    load_network,
    load_official_generator,
    load_weights,
    save_network,
)
from tdkstain.weights.cards import build_network
from tdkstain.weights.validation import MAX_JSON_DEPTH

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LOADERS = (load_weights, load_network, load_generator_with_card)

_KWARGS = dict(input_nc=3, output_nc=3, ngf=2, n_downsampling=1, n_blocks=1, padding_type="reflect")


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in init_weights(ResnetGenerator(**_KWARGS)).state_dict().items()}


TINY = _tiny_state_dict()


def _card(**fields) -> dict:
    card = {"format": WEIGHTS_FORMAT, "network": "ResnetGenerator", "kwargs": dict(_KWARGS), "value_range": [-1, 1],
            "tile_size": 256, "mpp": 0.5, "config": {"loss": {"nuclei": 10.0}}, "step": 3, "images": 12}
    card.update(fields)
    return card


def _write(path: Path, card: dict, raw: dict[str, str] | None = None, tensors=None) -> Path:
    """``tensors`` (the tiny generator's by default) with ``card`` JSON-encoded, and ``raw`` metadata strings as they are."""
    metadata = {k: json.dumps(v) for k, v in card.items()}
    metadata.update(raw or {})
    save_file(TINY if tensors is None else tensors, str(path), metadata=metadata)
    return path


def _refused(loader, path: Path, *patterns: str) -> str:
    """The TdkstainError ``loader(path)`` raises: it names the file and each of ``patterns``."""
    with pytest.raises(TdkstainError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message, message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


@contextmanager
def _no_large_allocation(limit_bytes: int = 64 * 2**20):
    """Fail (AssertionError, not a TdkstainError) as soon as real (non-meta) parameters or buffers of more than
    ``limit_bytes`` in all are registered on this thread: registration comes before a parameter is initialised,
    so a regression that builds the network a card claims stops here instead of touching tens of GB."""
    owner, total = threading.get_ident(), [0]

    def hook(_module, _name, tensor):
        if tensor is not None and threading.get_ident() == owner and tensor.device.type != "meta":
            total[0] += tensor.numel() * tensor.element_size()
            assert total[0] <= limit_bytes, f"{total[0]:,} bytes of weights allocated before any check"

    handles = [torch_module.register_module_parameter_registration_hook(hook),
               torch_module.register_module_buffer_registration_hook(hook)]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- the observed failures


def test_valid_card_loads_and_mpp_is_a_float(tmp_path):
    path = _write(tmp_path / "g.safetensors", _card(mpp=1, tile_size=512))
    for loader in LOADERS:
        card = loader(path)[1]
        assert card["mpp"] == 1.0 and isinstance(card["mpp"], float) and card["tile_size"] == 512
    # An old card without most fields still loads: a missing field means unknown.
    old = _write(tmp_path / "old.safetensors", {"network": "ResnetGenerator", "kwargs": dict(_KWARGS)})
    generator, card = load_generator_with_card(old)
    assert generator.init_kwargs == _KWARGS and card["mpp"] is None and card["tile_size"] is None
    assert load_network(old)[0].init_kwargs == _KWARGS


def test_card_nested_100000_deep_is_an_error_not_a_recursion_error(tmp_path):
    path = _write(tmp_path / "deep.safetensors", _card(), raw={"config": "[" * 100_000 + "]" * 100_000})
    for loader in LOADERS:
        _refused(loader, path, "'config'", f"more than {MAX_JSON_DEPTH} levels")
    # Deep enough to pass Python's decoder, still deeper than a card: refused too.
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = [nested]
    path = _write(tmp_path / "deep65.safetensors", _card(source=nested))
    _refused(load_generator_with_card, path, "'source'", "levels")


def test_kwargs_as_a_string_is_an_error_not_an_attribute_error(tmp_path):
    path = _write(tmp_path / "k.safetensors", _card(kwargs="ngf=4, n_blocks=9"))
    for loader in LOADERS:
        _refused(loader, path, "'kwargs'", "'ngf=4, n_blocks=9'", "expected a JSON object")


@pytest.mark.parametrize("mpp", ["abc", [0.5], {"x": 0.5}, True, 0, -0.5, 1e9, float("nan"), float("inf")])
def test_mpp_that_is_not_a_positive_number_is_an_error(tmp_path, mpp):
    path = _write(tmp_path / "m.safetensors", _card(mpp=mpp))
    for loader in LOADERS:
        _refused(loader, path, "'mpp'", "expected microns per pixel")


def test_mpp_not_json_at_all_is_an_error(tmp_path):
    path = _write(tmp_path / "m.safetensors", _card(), raw={"mpp": "abc"})  # the plain string, not '"abc"'
    _refused(load_generator_with_card, path, "'mpp' is 'abc'")


@pytest.mark.parametrize("field, value, expected", [
    ("format", 1, "the string"),
    ("format", "tdkstain.weights/9", "format 'tdkstain.weights/9'"),
    ("network", "Evil", "expected one of"),
    ("network", ["ResnetGenerator"], "expected one of"),
    ("tile_size", 0, "'tile_size'"),
    ("tile_size", MAX_TILE_SIDE + 1, "'tile_size'"),
    ("tile_size", 256.5, "'tile_size'"),
    ("tile_size", "256", "'tile_size'"),
    ("value_range", [1, -1], "'value_range'"),
    ("value_range", "[-1, 1]", "'value_range'"),
    ("config", "lr=1", "'config'"),
    ("step", -1, "'step'"),
    ("images", 1.5, "'images'"),
    ("images", 10**400, "'images'"),
])
def test_each_card_field_is_checked(tmp_path, field, value, expected):
    path = _write(tmp_path / "f.safetensors", _card(**{field: value}))
    message = _refused(load_generator_with_card, path, expected)
    assert repr(value)[:20] in message or field == "format"


@pytest.mark.parametrize("kwargs, expected", [
    ({"ngf": "2"}, "'kwargs.ngf'"),
    ({"ngf": True}, "'kwargs.ngf'"),
    ({"ngf": 2.5}, "'kwargs.ngf'"),
    ({"ngf": -2}, "'kwargs.ngf'"),
    ({"ngf": 10**30}, "'kwargs.ngf'"),
    ({"ngf": {"a": 1}}, "'kwargs.ngf'"),
    ({"padding_type": "x" * 1000}, "'kwargs.padding_type'"),
    ({"padding_type": "mirror"}, "do not build a ResnetGenerator"),
    ({"evil": 1}, "not an argument of ResnetGenerator"),
    ({"n_downsampling": 60_000}, "do not build a ResnetGenerator"),   # channels overflow: caught on the meta device
])
def test_kwargs_are_checked_against_the_constructor(tmp_path, kwargs, expected):
    path = _write(tmp_path / "k.safetensors", _card(kwargs={**_KWARGS, **kwargs}))
    for loader in (load_network, load_generator_with_card):
        _refused(loader, path, expected)


def test_header_larger_than_the_cap_is_refused_before_parsing(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.safetensors", _card(), raw={"notes": json.dumps("x" * (MAX_CARD_BYTES + 10))})
    import safetensors

    def no_parsing(*_args, **_kwargs):
        raise AssertionError("the header was parsed before its size was checked")

    monkeypatch.setattr(safetensors, "safe_open", no_parsing)
    for loader in LOADERS:
        _refused(loader, path, f"more than the {MAX_CARD_BYTES:,} bytes")


def test_header_length_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "lying.safetensors"
    path.write_bytes((2**62).to_bytes(8, "little") + b'{"__metadata__": {}}')
    for loader in (*LOADERS, load_generator):
        _refused(loader, path, "header claims", "truncated")
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    _refused(load_generator, short, "shorter than the 8-byte header length")


def test_small_file_claiming_a_huge_network_fails_fast_without_allocating(tmp_path):
    """The observed case: tiny tensors, a card with ngf=4096 and 1000 blocks; building it would take tens of GB."""
    path = _write(tmp_path / "huge.safetensors", _card(kwargs={**_KWARGS, "ngf": 4096, "n_blocks": 1000}))
    assert path.stat().st_size < 2**20
    with _no_large_allocation() as allocated:
        for loader in (load_network, load_generator_with_card, load_generator):
            _refused(loader, path, "does not hold a ResnetGenerator", "wrong shapes (file vs expected)", "missing keys")
        with pytest.raises(TdkstainError, match="wrong shapes"):
            build_network("ResnetGenerator", {**_KWARGS, "ngf": 4096, "n_blocks": 1000}, TINY, path)
    assert allocated[0] == 0  # nothing real was built: the check ran on the meta device
    with _no_large_allocation() as allocated:  # the guard sees a real build
        load_generator(_write(tmp_path / "fine.safetensors", _card()))
    assert allocated[0] > 0


@pytest.mark.parametrize("network, kwargs", [
    ("ResnetGenerator", {**_KWARGS, "n_blocks": 65_536}),
    ("UnetGenerator", {"num_downs": 5000, "ngf": 1}),
    ("MultiscaleDiscriminator", {"num_D": 60_000}),
])
def test_card_claiming_a_deep_network_stops_building_early(tmp_path, network, kwargs):
    path = _write(tmp_path / "deep.safetensors", _card(network=network, kwargs=kwargs))
    with _no_large_allocation():
        _refused(load_network, path, "does not hold" if network != "UnetGenerator" else "")


def test_pth_tensor_claiming_more_data_than_the_file_holds_is_refused(tmp_path):
    """A pickle can rebuild a 4-byte storage as a huge stride-0 view; a generator sized from it would take tens of GB."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ResnetGenerator(ngf=4096, n_blocks=1).state_dict().items()}
    forged = {k: torch.zeros(1).expand(shape) for k, shape in shapes.items()}
    path = tmp_path / "latest_net_G.pth"
    torch.save(forged, path)
    assert path.stat().st_size < 2**20
    with _no_large_allocation():
        for loader in (load_official_generator, load_generator):
            _refused(loader, path, "claims shape", "refused before")


# --------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_weights_in_safetensors_are_refused(tmp_path, bad):
    generator = init_weights(ResnetGenerator(**_KWARGS))
    with torch.no_grad():
        generator.model[4].weight[0, 0, 0, 0] = bad
    path = save_network(tmp_path / "g.safetensors", generator, mpp=0.5)
    for loader in (*LOADERS, load_generator):
        _refused(loader, path, "'model.4.weight'", "non-finite")


def test_nan_weights_in_the_authors_pth_are_refused(tmp_path):
    state_dict = dict(TINY)
    state_dict["model.1.bias"] = torch.full_like(state_dict["model.1.bias"], float("nan"))
    path = tmp_path / "latest_net_G.pth"
    torch.save(state_dict, path)
    for loader in (load_official_generator, load_generator):
        _refused(loader, path, "'model.1.bias'", "non-finite")


def test_translate_with_nan_weights_fails_and_writes_nothing(tmp_path, capsys):
    """The observed case: NaN weights stained an all-black image and exited 0."""
    generator = init_weights(ResnetGenerator(**_KWARGS))
    with torch.no_grad():
        for p in generator.parameters():
            p.fill_(float("nan"))
    weights = save_network(tmp_path / "nan.safetensors", generator)
    write_png(tmp_path / "he" / "a.png", np.full((32, 32, 3), 200, np.uint8))
    out = tmp_path / "out"
    assert main(["translate", "--checkpoint", str(weights), str(tmp_path / "he"), "--out", str(out),
                 "--device", "cpu", "--compile", "off"]) != 0
    assert "non-finite" in capsys.readouterr().err
    assert not (out / "a.png").exists()


def test_saving_a_card_that_could_not_be_loaded_is_refused(tmp_path):
    generator = init_weights(ResnetGenerator(**_KWARGS))
    with pytest.raises(TdkstainError, match="'mpp'"):
        save_network(tmp_path / "g.safetensors", generator, mpp=float("nan"))
    assert not (tmp_path / "g.safetensors").exists()


# --------------------------------------------------------------------------- property-based: any card


def _json_values() -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                        st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=20)


_FIELDS = ("format", "network", "kwargs", "value_range", "tile_size", "mpp", "config", "step", "images",
           "tdkstain_version", "source")


def _check_outcome(path: Path) -> None:
    """Loading gives a checked card or a TdkstainError naming the file; any other exception fails the test."""
    for loader in (load_generator_with_card, load_network):
        try:
            network, card = loader(path)
        except TdkstainError as err:
            assert str(path) in str(err)
            continue
        assert card["mpp"] is None or (isinstance(card["mpp"], float) and 0 < card["mpp"] <= 100 and math.isfinite(card["mpp"]))
        assert card.get("tile_size") is None or (type(card["tile_size"]) is int and 1 <= card["tile_size"] <= MAX_TILE_SIDE)
        assert card["network"] in NETWORKS and isinstance(card["kwargs"], dict)
        assert all(torch.isfinite(t).all() for t in network.state_dict().values() if t.is_floating_point())


@FUZZ
@given(field=st.sampled_from(_FIELDS), value=_json_values())
def test_any_json_in_any_card_field_gives_a_card_or_a_tdkstain_error(tmp_path, field, value):
    _check_outcome(_write(tmp_path / "fuzz.safetensors", _card(**{field: value})))


@FUZZ
@given(field=st.sampled_from(_FIELDS), raw=st.text(max_size=40))
def test_any_raw_metadata_string_gives_a_card_or_a_tdkstain_error(tmp_path, field, raw):
    _check_outcome(_write(tmp_path / "fuzz.safetensors", _card(), raw={field: raw}))


_KWARG_VALUES = st.one_of(st.integers(-5, 70_000), st.sampled_from([0, 1, 2, 3, 4, 9, 64]), st.booleans(), st.none(),
                          st.floats(allow_nan=True), st.text(max_size=10), st.sampled_from(["reflect", "zero", "replicate"]),
                          st.lists(st.integers(0, 8), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@FUZZ
@given(network=st.sampled_from(sorted(NETWORKS)),
       kwargs=st.dictionaries(st.sampled_from([*_KWARGS, "num_downs", "ndf", "num_D", "n_layers", "nef", "norm", "bogus"]),
                              _KWARG_VALUES, max_size=4))
def test_any_network_and_kwargs_give_a_network_or_a_tdkstain_error(tmp_path, network, kwargs):
    base = _KWARGS if network == "ResnetGenerator" else {}
    _check_outcome(_write(tmp_path / "fuzz.safetensors", _card(network=network, kwargs={**base, **kwargs})))
