"""Model cards: round trips (embedded, sidecar), checksum, presets, and every validation error."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tiny_models import threshold_onnx, tiny_card, tiny_model

from HILASegmentLib.ground.errors import HilaError
from HILASegmentLib.inference.windows import gaussian_importance, gaussian_smooth, window_slices
from HILASegmentLib.models import modelcard as mc
from HILASegmentLib.models.modelcard import ModelCard, read_card, resolve_model, write_card


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_card_json_round_trip():
    card = tiny_card(postprocess={"threshold": 0.6, "largest_component": True}, metrics={"dice": {"sphere": 0.9}},
                     training_set=[{"case": "a", "correction": 2}], parent_version=1)
    card.extra["custom_field"] = {"kept": True}
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert json.loads(card.to_json())["schema_version"] == mc.SCHEMA_VERSION
    assert json.loads(card.to_json())["custom_field"] == {"kept": True}


def test_embedded_card_round_trip_and_checksum(tmp_path):
    import onnx

    path = threshold_onnx(tmp_path / "m.onnx")
    plain = mc.onnx_checksum(path)
    card = write_card(path, tiny_card())
    assert card.checksum == plain, "embedding the card must not change the checksum"
    assert read_card(path) == card
    # the reference reader sees a valid model with the card in its metadata
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[mc.METADATA_KEY])["name"] == "tiny-threshold"
    # re-embedding a changed card replaces it (one entry), checksum unchanged
    card2 = write_card(path, dataclasses.replace(card, version=2, description="v2"))
    assert read_card(path).version == 2 and card2.checksum == plain
    assert [p.key for p in onnx.load(str(path)).metadata_props].count(mc.METADATA_KEY) == 1
    # other metadata survives, and a change to the weights changes the checksum
    model = onnx.load(str(path))
    model.metadata_props.add(key="other", value="x")
    model.graph.initializer[0].float_data[:] = []
    w = np.frombuffer(model.graph.initializer[0].raw_data, np.float32).copy() + 1
    model.graph.initializer[0].raw_data = w.tobytes()
    onnx.save(model, str(path))
    info = mc.inspect_onnx(path)
    assert info.metadata["other"] == "x" and mc.METADATA_KEY in info.metadata
    assert info.checksum != plain


def test_sidecar_card(tmp_path):
    path = tiny_model(tmp_path, embed=False)
    assert mc.inspect_onnx(path).metadata == {}
    card = read_card(path)
    assert card.name == "tiny-threshold" and card.checksum == mc.onnx_checksum(path)
    # the generic name card.json also works
    (tmp_path / "tiny.card.json").rename(tmp_path / "card.json")
    assert read_card(path).name == "tiny-threshold"


def test_missing_card_and_bad_files(tmp_path):
    path = threshold_onnx(tmp_path / "nocard.onnx")
    with pytest.raises(HilaError) as e:
        read_card(path)
    assert "no model card" in one_line(e)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(HilaError) as e:
        mc.inspect_onnx(bad)
    assert "not an ONNX model" in one_line(e)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(HilaError) as e:
        mc.inspect_onnx(trunc)
    assert "corrupt or truncated" in one_line(e)
    with pytest.raises(HilaError) as e:
        mc.inspect_onnx(tmp_path / "absent.onnx")
    assert "no such" in one_line(e)
    side = tmp_path / "nocard.card.json"
    side.write_text("{not json", encoding="utf-8")
    with pytest.raises(HilaError) as e:
        read_card(path)
    assert "not valid JSON" in one_line(e)


BAD_CARDS = [
    ({"modality": "PET"}, "modality"),
    ({"activation": "relu"}, "activation"),
    ({"orientation": "XYZ"}, "orientation"),
    ({"labels": []}, "labels"),
    ({"labels": [{"value": 1, "name": "a"}, {"value": 1, "name": "b"}]}, "unique"),
    ({"labels": [{"value": 0, "name": "bg"}]}, "1..255"),
    ({"labels": [{"value": 1, "name": "a|b"}]}, "names"),
    ({"labels": [{"value": 1, "name": "a", "color": [2, 0, 0]}]}, "color"),
    ({"labels": [{"name": "a"}]}, "value and name"),
    ({"spacing": [0.8, -1, 3]}, "spacing"),
    ({"spacing": [0.8, 3]}, "spacing"),
    ({"patch_size": [128, 128]}, "patch_size"),
    ({"patch_size": [128, 0, 32]}, "patch_size"),
    ({"normalization": {"kind": "minmax"}}, "normalization.kind"),
    ({"normalization": {"kind": "zscore", "clip_percentiles": [99, 1]}}, "clip_percentiles"),
    ({"normalization": {"kind": "ct_window", "level": 40, "width": 400}}, "needs modality CT"),
    ({"modality": "CT", "normalization": {"kind": "ct_window", "level": 40}}, "width"),
    ({"modality": "CT", "normalization": {"kind": "ct_window", "level": 40, "width": -4}}, "positive"),
    ({"modality": "CT", "normalization": {"kind": "zscore"}}, "ct_window"),
    ({"activation": "softmax", "postprocess": {"threshold": 0.5}}, "sigmoid models only"),
    ({"postprocess": {"threshold": 1.5}}, "threshold"),
    ({"postprocess": {"blur": 1}}, "unknown keys"),
    ({"inference": {"overlap": 1.0}}, "overlap"),
    ({"roi": {"kind": "center"}}, "roi.size"),
    ({"roi": {"kind": "corner"}}, "roi.kind"),
    ({"checksum": "md5:abc"}, "checksum"),
    ({"schema_version": 99}, "newer"),
    ({"name": ""}, "name"),
]


@pytest.mark.parametrize("change,expect", BAD_CARDS, ids=[c[1] + str(i) for i, c in enumerate(BAD_CARDS)])
def test_validation_errors(change, expect):
    d = json.loads(tiny_card().to_json())
    d.update(change)
    with pytest.raises(HilaError) as e:
        ModelCard.from_dict(d, "card X")
    msg = one_line(e)
    assert msg.startswith("card X:") and expect in msg


def test_missing_fields():
    d = json.loads(tiny_card().to_json())
    del d["spacing"], d["labels"]
    with pytest.raises(HilaError) as e:
        ModelCard.from_dict(d)
    assert "lacks labels, spacing" in one_line(e)


def test_taps_preset():
    card = ModelCard.from_json((mc.PRESETS_DIR / "taps.json").read_text(encoding="utf-8"))
    assert card.spacing == (0.8, 0.8, 3.0) and card.patch_size == (128, 128, 32)
    assert card.activation == "sigmoid" and card.labels[0].name == "prostate"
    assert card.normalization == {"kind": "zscore", "nonzero": True}
    assert card.postprocess == {"smooth_sigma_vox": 2.5, "threshold": 0.55, "largest_component": True}
    assert "taps" in mc.preset_names()
    import importlib.util

    if importlib.util.find_spec("taps") is None:
        pytest.skip("lavlab-taps is not installed (pip install --no-deps lavlab-taps)")
    path, card2 = resolve_model("taps")
    assert path.name == "model_v1.onnx" and card2 == card
    assert mc.onnx_checksum(path) == card.checksum, "the installed TAPS model is not the one the preset describes"


def test_taps_missing_gives_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(mc.importlib.util, "find_spec", lambda name, *a: None if name == "taps" else real(name, *a))
    with pytest.raises(HilaError) as e:
        resolve_model("taps")
    msg = one_line(e)
    assert "not installed" in msg and "pip install --no-deps lavlab-taps" in msg


def test_resolve_unknown_name_lists_known():
    with pytest.raises(HilaError) as e:
        resolve_model("no-such-model")
    assert "taps" in one_line(e)


def test_gaussian_smooth_matches_scipy():
    from scipy import ndimage

    a = np.random.default_rng(1).standard_normal((30, 25, 12)).astype(np.float32)
    ours = gaussian_smooth(a, 2.5)
    ref = ndimage.gaussian_filter(a, 2.5, mode="nearest")
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_window_placement_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, win, ov in [((230, 200, 29), (128, 128, 32), 0.5), ((300, 140, 60), (96, 96, 48), 0.25), ((128, 128, 32), (128, 128, 32), 0.5)]:
        padded = tuple(max(s, w) for s, w in zip(size, win))
        ours = sorted(tuple(s.start for s in sl) for sl in window_slices(padded, win, ov))
        ref = sorted(tuple(s.start for s in sl) for sl in dense_patch_slices(padded, win, _get_scan_interval(padded, win, 3, (ov,) * 3)))
        assert ours == ref
    m = gaussian_importance((16, 16, 8))
    assert m.max() == 1.0 and m.min() > 0 and m[8, 8, 4] == 1.0


def test_normalization_schemes_are_one_registry(monkeypatch):
    """A scheme added to normalize.NORMALIZATIONS is known to both the card validation and normalize."""
    from HILASegmentLib.models import normalize as nz

    d = json.loads(tiny_card().to_json())
    d["normalization"] = {"kind": "minmax"}
    with pytest.raises(HilaError):
        ModelCard.from_dict(d)
    with pytest.raises(HilaError):
        nz.normalize(np.arange(4.0), d["normalization"])

    def minmax(a, spec, where):
        return (a - a.min()) / (a.max() - a.min())

    monkeypatch.setitem(nz.NORMALIZATIONS, "minmax", nz.Normalization(minmax, lambda spec, modality: None))
    card = ModelCard.from_dict(d)
    assert np.allclose(nz.normalize(np.arange(5.0), card.normalization), [0, 0.25, 0.5, 0.75, 1])
