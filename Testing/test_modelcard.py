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
from HILASegmentLib.models.cardsections import Metrics
from HILASegmentLib.models.modelcard import ModelCard, read_card, resolve_model, write_card


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_card_json_round_trip():
    card = tiny_card(postprocess={"threshold": 0.6, "largest_component": True}, metrics=Metrics.from_dict({"dice": {"sphere": 0.9}}),
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
    # the typed sections (issue 25 item 4): checked once, where the card is read, naming the field
    ({"metrics": {"validation": {"mean_dice": "high"}}}, "metrics.validation.mean_dice must be a number"),
    ({"metrics": {"gate": {"promote": "yes"}}}, "metrics.gate.promote must be true or false"),
    ({"metrics": {"validation": []}}, "metrics.validation must be an object"),
    ({"training": {"steps": 2.5}}, "training.steps must be a whole number"),
    ({"training": {"gate_set": ["c1"]}}, "training.gate_set must be a list of objects"),
    ({"training": {"checkpoint": {"chosen_on": "c1"}}}, "training.checkpoint.chosen_on must be a list"),
    ({"training": "fast"}, "training must be an object"),
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


# --------------------------------------------------------------------------- typed sections (issue 25, item 4)

SHIPPED_ONNX = [mc.PRESETS_DIR.parent / "models" / "pelvic_ct_unet.onnx",
                mc.PRESETS_DIR.parents[1] / "Resources" / "Models" / "hila_tiny_test.onnx"]


@pytest.mark.parametrize("path", SHIPPED_ONNX, ids=lambda p: p.name)
def test_shipped_model_cards_round_trip_to_the_same_json_text(path):
    """The cards inside the shipped models (the CT starter was written by an older trainer: ``held_out_cases``,
    ``metrics.training_cases_dice``) read into the typed sections and write back to exactly the same JSON text."""
    text = mc.inspect_onnx(path).metadata[mc.METADATA_KEY]
    card = ModelCard.from_json(text)
    assert card.to_json() == text
    assert ModelCard.from_json(card.to_json()) == card


def test_the_starter_card_reads_through_named_fields():
    card = read_card(SHIPPED_ONNX[0])
    assert card.training is not None and card.training.init == "scratch" and card.training.steps == 624
    assert card.training.chosen_on() == ["c0001"]          # an old card's held-out cases, mapped where it is read
    assert "c0001" in card.seen_cases() and card.gated_cases() == set()
    assert card.metrics.parity["max_abs_diff"] < card.metrics.parity["tolerance"]
    assert card.metrics.validation is None and card.mean_dice() is None  # leave-one-out is not a validation Dice
    assert card.training_loop()["batch_size"] == 2


def test_taps_preset_round_trips_with_only_the_defaults_added():
    d = json.loads((mc.PRESETS_DIR / "taps.json").read_text(encoding="utf-8"))
    out = ModelCard.from_dict(d).to_dict()
    assert {k: out[k] for k in d} == d
    assert {k: v for k, v in out.items() if k not in d} == {"parent_version": None, "training_set": [], "metrics": {}}
    assert "training" not in out  # a model the trainer did not make has no training section


@pytest.mark.parametrize("key", mc.LEGACY_DICE_KEYS)
def test_old_cards_dice_keys_are_mapped_once_where_the_card_is_read(key):
    """Cards from before ``metrics.validation`` name their Dice five ways; from_dict maps them (a number, or the mean
    of numbers per label), the card keeps them verbatim, and the trainer's figure wins when both are there."""
    for value, expect in ((0.91234, 0.91234), ({"prostate": 0.8, "rectum": 0.6, "none": None}, 0.7),
                          (float("nan"), None), ("high", None)):
        d = json.loads(tiny_card(metrics=mc.Metrics.from_dict({key: value})).to_json())
        card = ModelCard.from_dict(d)
        assert card.mean_dice() == (pytest.approx(expect) if expect is not None else None), (key, value)
        assert json.dumps(card.to_dict()["metrics"]) == json.dumps(d["metrics"])
    both = ModelCard.from_dict(dict(d, metrics={key: 0.5, "validation": {"mean_dice": 0.8}}))
    assert both.mean_dice() == 0.8
    assert ModelCard.from_dict(dict(d, metrics={})).mean_dice() is None


def test_section_nulls_and_unknown_keys_survive_and_new_fields_are_written():
    d = json.loads(tiny_card().to_json())
    d["metrics"] = {"validation": {"mean_dice": None, "set": "gate", "note": "kept"}, "hd95": 3.2}
    d["training"] = {"init": "scratch", "ignore_band": None, "custom": [1]}
    card = ModelCard.from_dict(d)
    assert card.to_dict() == d and card.mean_dice() is None
    card.training.timings = {"total_s": 1.0}
    card.metrics.gate = mc.GateVerdict(policy="auto", promote=False, reason="r", rule={}, split="s", comparison={})
    out = card.to_dict()
    assert out["training"]["timings"] == {"total_s": 1.0} and out["metrics"]["gate"]["reason"] == "r"
    # a record the trainer builds states every field (null when off), except those a later step sets
    fresh = mc.TrainingRecord(init="scratch").to_dict()
    assert fresh["ignore_band"] is None and "gate_set" not in fresh and "timings" not in fresh
