#!/usr/bin/env python
"""Build a workspace from the three real pelvic CTs with the `hila` command line, and verify that
`status`, `export` and `check` report exactly what was done.

    python Testing/build_ct_workspace.py OUT_DIR [--data ../shared/data/pelvic_ct]

What it does, as a user would: `hila init` (CT; prostate, bladder, rectum), `hila import` of the
three CTs, `hila submit` of Pelvic-Ref002's manual contours as *reviewed* and of Pelvic-Ref003's and
Pelvic-Ref005's deep-learning auto-contours as *rough*, then a resubmission of Pelvic-Ref005 with
its manual contours as *reviewed* (version 2). Then `status`, `export` and `check` (all `--json`)
are compared with that record: case states, corrections per quality, versions, the exported label
maps voxel for voxel (workspace values 1-3; the femoral heads 4/5 of the source files are not
workspace labels and are dropped, which `submit` reports). Exits 0 and prints a summary when every
figure matches, 1 with the first mismatch otherwise.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "pelvic_ct"
CASES = ("Pelvic-Ref002", "Pelvic-Ref003", "Pelvic-Ref005")
LABELS = ("prostate", "bladder", "rectum")
# (case, label file, quality): the submissions in order; the last one resubmits Pelvic-Ref005.
PLAN = (("Pelvic-Ref002", "labels_manual", "reviewed"), ("Pelvic-Ref003", "labels_dl", "rough"),
        ("Pelvic-Ref005", "labels_dl", "rough"), ("Pelvic-Ref005", "labels_manual", "reviewed"))


def hila(*args: str, ok: bool = True) -> dict:
    """Run `hila ... --json` as its own process; return its result line."""
    cmd = [sys.executable, "-m", "HILASegmentLib", *args, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    results = [ln for ln in lines if ln.get("event") in ("result", "error")]
    if ok and p.returncode != 0:
        raise SystemExit(f"FAILED: hila {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    if not results:
        raise SystemExit(f"FAILED: hila {' '.join(args)} printed no JSON result: {p.stdout[-300:]} {p.stderr[-300:]}")
    out = results[-1]
    out["_rc"] = p.returncode
    return out


def expect(what: str, got, want) -> None:
    if got != want:
        raise SystemExit(f"FAILED: {what}: got {got!r}, expected {want!r}")
    print(f"  ok  {what}: {got!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a new folder: the workspace goes to OUT/ws, the export to OUT/export")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    import numpy as np
    import SimpleITK as sitk

    ws, exp = args.out / "ws", args.out / "export"
    print(f"init {ws}")
    hila("init", str(ws), "--modality", "CT", "--labels", ",".join(LABELS))
    ids = {}
    for c in CASES:
        r = hila("import", str(ws), str(args.data / c / "ct.nii.gz"))
        ids[c] = r["case_id"]
        print(f"import {c} -> {r['case_id']}")
    again = hila("import", str(ws), str(args.data / CASES[0] / "ct.nii.gz"))
    expect("re-import of the same CT is detected", (again["case_id"], again["existing"]), (ids[CASES[0]], True))

    done = []  # (case, file, quality, version)
    efforts = []
    for case, label, quality in PLAN:
        r = hila("submit", str(ws), ids[case], str(args.data / case / f"{label}.nii.gz"), "--quality", quality,
                 "--annotator", "build_ct_workspace", "--seconds", "60")
        done.append((case, label, quality, r["version"]))
        efforts.append(r["correction"]["effort"])
        ign = r["correction"]["effort"].get("ignored_values")
        print(f"submit {case} {label} as {quality} -> v{r['version']}"
              + (f" (dropped label values {sorted(ign)} not in the workspace)" if ign else ""))
    expect("versions given out", [d[3] for d in done], [1, 1, 1, 2])
    # the resubmission's effort is measured against v1: manual vs DL contours of Pelvic-Ref005, whose Dice the
    # data README gives as 0.90 / 0.92 / 0.86 (prostate / bladder / rectum)
    e = efforts[-1]
    expect("resubmission measured against", e["against"], "correction v1")
    expect("its Dice per label (2 decimals)", {k: round(v, 2) for k, v in e["dice"].items()},
           {"prostate": 0.90, "bladder": 0.92, "rectum": 0.86})

    print("status")
    st = hila("status", str(ws))
    latest = {}
    for case, label, quality, version in done:
        latest[case] = (label, quality, version)
    expect("cases", st["cases"]["total"], len(CASES))
    states = {c["case_id"]: c["state"] for c in st["cases"]["list"]}
    expect("case states", {c: states[ids[c]] for c in CASES}, {c: latest[c][1] for c in CASES})
    expect("corrections per quality", st["corrections"]["by_quality"],
           {"reviewed": sum(d[2] == "reviewed" for d in done), "rough": sum(d[2] == "rough" for d in done), "weak": 0})
    expect("corrections in total", st["corrections"]["total"], len(done))
    expect("seconds of effort", st["effort"]["all"]["seconds_total"], 60.0 * len(done))
    expect("models", st["models"], [])

    print("export")
    ex = hila("export", str(ws), str(exp))
    expect("exported cases", (ex["cases"], ex["labels"]), (len(CASES), len(CASES)))
    man = json.loads((exp / "manifest.json").read_text(encoding="utf-8"))
    for entry in man["cases"]:
        case = next(c for c in CASES if ids[c] == entry["case_id"])
        label, quality, version = latest[case]
        expect(f"export {case}: version and quality", (entry["correction_version"], entry["quality"]), (version, quality))
        src = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / case / f"{label}.nii.gz")))
        src = np.where(src <= len(LABELS), src, 0)
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(exp / entry["label"])))
        expect(f"export {case}: label map equals {label} (values 1-3)", bool(np.array_equal(got, src)), True)
        img = sitk.ReadImage(str(exp / entry["image"]))
        ref = sitk.ReadImage(str(args.data / case / "ct.nii.gz"))
        same = (img.GetSize() == ref.GetSize() and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
                and np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref)))
        expect(f"export {case}: image equals the CT", same, True)
        if entry.get("segmentation"):
            expect(f"export {case}: .seg.nrrd written", (exp / entry["segmentation"]).is_file(), True)

    print("check")
    ck = hila("check", str(ws))
    expect("check clean", (ck["_rc"], ck["ok"], ck["problems"], ck["orphans"]), (0, True, [], []))
    expect("rows verified (cases + corrections)", ck["rows_checked"], len(CASES) + len(done))

    print(f"workspace {ws}: {len(CASES)} CTs, {len(done)} corrections "
          f"({st['corrections']['by_quality']['reviewed']} reviewed, {st['corrections']['by_quality']['rough']} rough; "
          f"{CASES[2]} resubmitted as v2); status, export and check agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
