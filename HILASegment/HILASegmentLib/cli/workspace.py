"""Workspace commands: ``hila init | import | submit | status | check | export | models | rank``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..dicom import exportformats  # the export format registry (light)
from ..ground.errors import HilaError
from ..quality import strategies  # the ranking registry (light: names and need functions)
from . import argtypes, emit, make_progress


def register(sub, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[parent], help="create a workspace (a folder with a ledger and immutable files)",
                       description="Create a workspace in a new or empty folder.")
    p.add_argument("workspace", type=Path)
    p.add_argument("--modality", required=True, help="MR or CT")
    p.add_argument("--labels", default=None, help="label names, comma-separated (values 1..n in this order)")
    p.add_argument("--model", default=None, help="starter model: a name (e.g. taps) or an .onnx path; becomes version 1")
    p.add_argument("--shared-disk", action="store_true", help="the folder is on a network disk used from several "
                   "machines at once (rollback journal instead of WAL)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import", parents=[parent], help="import volumes or DICOM series folders as cases",
                       description="Import volumes (.nrrd .nii .nii.gz .mha) or DICOM series folders, and DICOM SEG "
                       "or RTSTRUCT files (as corrections of the case whose series they reference; those inside a "
                       "series folder too). Anything already in the workspace is reported, not duplicated.")
    p.add_argument("workspace", type=Path)
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    p.add_argument("--name", default=None, help="case name (one PATH only; default: from the file or folder name)")
    p.add_argument("--modality-override", action="store_true",
                   help="import even when the volume looks like another modality than the workspace's")
    p.add_argument("--dicomweb", metavar="URL", help="import from a DICOMweb server (QIDO-RS/WADO-RS) instead of "
                   "PATHs: the image series of --study (credentials: HILA_DICOMWEB_USER/PASSWORD or HILA_NETRC)")
    p.add_argument("--study", metavar="UID", help="with --dicomweb: the study instance UID")
    p.add_argument("--series", metavar="UID", help="with --dicomweb: only this series of the study")
    _dicom_label_options(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("submit", parents=[parent], help="record a corrected label for a case (a new version)",
                       description="Record LABELFILE (label map or Slicer .seg.nrrd) as the next correction version of CASE.")
    p.add_argument("workspace", type=Path)
    p.add_argument("case", help="case id (or unique case name)")
    p.add_argument("labelfile", type=Path, nargs="?", default=None,
                   help="label map, .seg.nrrd, DICOM SEG or RTSTRUCT (not with --box/--lines)")
    p.add_argument("--quality", default=None, choices=["reviewed", "rough", "weak"], help="default: reviewed; "
                   "weak with --box/--lines")
    p.add_argument("--label", default=None, help="weak label: the workspace label the marks are for")
    p.add_argument("--box", default=None, metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="weak label: two opposite box corners in mm (LPS; RAS with --ras); write --box=-12,... "
                   "when the first number is negative")
    p.add_argument("--lines", default=None, metavar="LONG;SHORT",
                   help="weak label, RECIST-style: long and short diameter, each X0,Y0,Z0,X1,Y1,Z1 in mm, "
                   "separated by ';' (e.g. '10,5,30,40,5,30;25,-8,30,25,18,30'); they must cross")
    p.add_argument("--ras", action="store_true", help="--box/--lines points are RAS (Slicer) instead of LPS")
    p.add_argument("--builder", default="ellipsoid", choices=argtypes.WEAK_BUILDERS,
                   help="weak label: what turns the marks into a pseudo-mask: ellipsoid (default: as good or better on "
                   "the real CT from a tight box, scripts/bench_assist.py), assistant (the box assistant, `hila assist`), "
                   "auto (the assistant when installed); the ledger records which")
    p.add_argument("--annotator", default=None)
    p.add_argument("--seconds", type=argtypes.real(0.0), default=None, help="time spent correcting")
    p.add_argument("--based-on", type=argtypes.integer(1), default=None, help="prediction id this corrects (default: the case's latest)")
    p.add_argument("--modality-override", action="store_true",
                   help="record it even when the case's image looks like another modality than the workspace's")
    p.add_argument("--strict", action="store_true", help="refuse label values the workspace does not know "
                   "(default: drop them and say so)")
    p.add_argument("--contour-sets", default=None, metavar="SETS",
                   help="RTSTRUCT: contour sets to take: manual (default), all, or e.g. manual,DL,MBS (others rough)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[parent], help="cases by state, corrections per quality, models, effort")
    p.add_argument("workspace", type=Path)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check", parents=[parent], help="verify every ledger row against its file; find orphans",
                       description="Exit 0 when the workspace is consistent (leftovers of interrupted writes are "
                       "reported, not errors); non-zero with a one-line summary when a file is missing or changed.")
    p.add_argument("workspace", type=Path)
    p.add_argument("--repair", action="store_true", help="move orphans and stale temporaries to lost+found/ (never deletes)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("export", parents=[parent], help="images + latest corrections as NIfTI and .seg.nrrd with a "
                       "manifest, or as DICOM SEG / RTSTRUCT (--format)")
    p.add_argument("workspace", type=Path)
    p.add_argument("directory", type=Path, nargs="?", default=None, help="output folder (not with --dicomweb)")
    p.add_argument("--all", action="store_true", help="also export images of cases without a correction")
    p.add_argument("--dicomweb", metavar="URL", help="store the latest corrections as DICOM SEG on a DICOMweb "
                   "server (STOW-RS; idempotent by UID) instead of writing a folder")
    p.add_argument("--format", choices=list(exportformats.EXPORT_FORMATS), default=None,
                   help="write each DICOM case's latest correction as a DICOM object referencing its series: "
                        + exportformats.help_text())
    p.add_argument("--case", action="append", default=None, metavar="CASE", help="with --format: only this case "
                   "(repeatable)")
    p.add_argument("--prediction", action="store_true", help="with --format: the latest prediction (AI output, "
                   "AUTOMATIC with the model version) instead of the latest correction")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", parents=[parent], help="model versions: list, promote VERSION, rollback")
    p.add_argument("workspace", type=Path)
    p.add_argument("action", nargs="?", default="list", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", default=None)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("rank", parents=[parent], help="unreviewed cases, most in need of review first",
                       description="Unreviewed cases, most in need of review first, with each prediction's "
                       "predicted Dice (the learned quality model's where `hila status` says it is in use, else the "
                       "expected soft Dice of the model's own probabilities) and each label's predicted Dice with its "
                       "source (expected_soft_dice, assistant_agreement or learned: the one `hila status` says won "
                       "by leave-one-case-out).")
    p.add_argument("workspace", type=Path)
    p.add_argument("--by", default=strategies.DEFAULT, choices=list(strategies.STRATEGIES),
                   help="; ".join(f"{s.name}: {s.help}" for s in strategies.STRATEGIES.values()))
    p.add_argument("--review-budget", type=argtypes.real(0.0, 1.0, lo_open=True), default=None, metavar="F",
                   help="list only the first fraction F (0 < F <= 1) of the predicted cases: by quality, the reviews "
                   "that should raise the cohort's mean Dice most")
    p.add_argument("--seed", type=argtypes.integer(0), default=0, help="with --by random: the order's seed")
    p.add_argument("--suspects", action="store_true", help="list the suspect corrections instead (flagged after "
                   "training: far worse agreement with an unseen model than their peers, in Dice or at the contour: "
                   "drawn beyond or inside the model's organ, ragged; re-review them)")
    p.set_defaults(func=cmd_rank)


def _dicom_label_options(p) -> None:
    """Options for DICOM SEG/RTSTRUCT that become corrections (import)."""
    p.add_argument("--contour-sets", default=None, metavar="SETS",
                   help="RTSTRUCT: contour sets to import: manual (default; as --quality), all, none, or e.g. "
                   "manual,DL,MBS (auto-contour sets as rough)")
    p.add_argument("--quality", default=None, choices=["reviewed", "rough", "weak"],
                   help="quality of the manual contours / SEG (default: reviewed, or the SEG's own)")
    p.add_argument("--annotator", default=None, help="who drew them (default: the object's own)")
    p.add_argument("--strict", action="store_true", help="refuse structures that match no workspace label")


def _open(path: Path, readonly: bool = False):
    """The workspace; ``readonly`` for commands that only read it (they then work on a read-only disk)."""
    from ..workspace import Workspace
    return Workspace.open(path, readonly=readonly)


def cmd_init(args) -> int:
    from ..workspace import Workspace
    ws = Workspace.create(args.workspace, args.modality, args.labels, model=args.model, shared_disk=args.shared_disk)
    with ws:
        s = ws.settings
        m = ws.current_model()
        res = {"workspace": str(ws.root), "modality": s.modality,
               "labels": [{"value": l.value, "name": l.name, "color": list(l.color)} for l in s.labels],
               "model": None if m is None else {"version": m.version, "name": m.card.name}}
    labels = ", ".join(f"{l['value']} {l['name']}" for l in res["labels"])
    model = f"; model v1 {res['model']['name']}" if res["model"] else ""
    emit(args, res, f"workspace {res['workspace']}: {res['modality']}, labels {labels}{model}")
    return 0


def cmd_import(args) -> int:
    from ..ground.progress import scaled
    from . import dicomio
    if args.name and len(args.paths) > 1:
        raise HilaError("--name: only with one PATH")
    if args.dicomweb or args.study or args.series:
        from . import dicomio
        return dicomio.cmd_import_dicomweb(args)
    if not args.paths:
        raise HilaError("import: give one or more PATHs, or --dicomweb URL --study UID")
    with _open(args.workspace) as ws:
        prog = make_progress(args, "import")
        cases = []
        try:
            n = len(args.paths)
            for i, p in enumerate(args.paths):
                cases.append(dicomio.import_path(ws, p, args, scaled(prog, i / n, (i + 1) / n)))
        finally:
            if hasattr(prog, "close"):
                prog.close()
    res = {"case_id": cases[0]["case_id"], "existing": cases[0]["existing"], "cases": cases}
    lines = [dicomio.describe(c) for c in cases]
    emit(args, res, "\n".join(lines))
    return 0


def _weak_marks(args) -> dict:
    """The marks (``weak`` format) of --label with --box or --lines; every argument checked before the workspace."""
    from ..formats import weak
    if args.box and args.lines:
        raise HilaError("submit: --box or --lines, not both")
    if args.labelfile is not None:
        raise HilaError(f"submit: {args.labelfile}: a label file and --box/--lines at once; give one")
    if args.quality not in (None, "weak"):
        raise HilaError(f"submit: --box/--lines make a weak label, not {args.quality}")
    if not args.label:
        raise HilaError("submit: --box/--lines need --label NAME")
    if args.box:
        item = {"label": args.label, "box": weak.parse_numbers(args.box, 6, "--box").tolist()}
    else:
        parts = str(args.lines).split(";")
        if len(parts) != 2:
            raise HilaError(f"--lines {args.lines!r}: need LONG;SHORT, each X0,Y0,Z0,X1,Y1,Z1")
        item = {"label": args.label, "lines": [weak.parse_numbers(t, 6, "--lines").tolist() for t in parts]}
    return {"space": "RAS" if args.ras else "LPS", "items": [item]}


def cmd_submit(args) -> int:
    with _open(args.workspace) as ws:
        if args.box or args.lines:
            c = ws.submit_marks(args.case, _weak_marks(args), annotator=args.annotator, seconds=args.seconds,
                                based_on=args.based_on, modality_override=args.modality_override,
                                builder=args.builder)
        else:
            if args.labelfile is None:
                raise HilaError("submit: give LABELFILE, or --label NAME with --box/--lines")
            from . import dicomio
            if dicomio.is_dicom_object(args.labelfile):
                res = dicomio.submit_object(ws, args)
                emit(args, res, dicomio.describe(dict(res, source=str(args.labelfile))))
                return 0
            c = ws.submit(args.case, args.labelfile, quality=args.quality or "reviewed", annotator=args.annotator,
                          seconds=args.seconds, based_on=args.based_on, strict=args.strict,
                          modality_override=args.modality_override)
        res = {"case_id": c.case_id, "correction": c.to_dict(), "version": c.version, "quality": c.quality}
    e = c.effort
    dice = ", ".join(f"{k} {v:.3f}" for k, v in e.get("dice", {}).items() if v is not None)
    against = e.get("against", "nothing")
    change = f"{e.get('voxels_changed', 0)} voxels changed vs {against}" + (f" (Dice {dice})" if dice else "")
    ign = e.get("ignored_values")
    note = f"; ignored label value(s) {', '.join(ign)} not in the workspace" if ign else ""
    emit(args, res, f"case {c.case_id}: correction v{c.version} ({c.quality}) recorded; {change}{note}")
    return 0


def cmd_status(args) -> int:
    with _open(args.workspace, readonly=True) as ws:
        st = ws.status()
    by_state = ", ".join(f"{k} {v}" for k, v in st["cases"]["by_state"].items() if v)
    by_q = ", ".join(f"{k} {v}" for k, v in st["corrections"]["by_quality"].items())
    models = ", ".join(f"v{m['version']} {m['status']}" for m in st["models"]) or "none"
    eff = st["effort"].get("all", {})
    lines = [f"workspace {st['workspace']} ({st['modality']}; labels {', '.join(l['name'] for l in st['labels'])})",
             f"cases: {st['cases']['total']} ({by_state or 'none'})",
             f"corrections: {st['corrections']['total']} ({by_q}); predictions: {st['predictions']}",
             f"models: {models}",
             f"effort: {eff.get('corrections', 0)} corrections, {eff.get('seconds_total', 0)} s, "
             f"mean {eff.get('voxels_changed_mean')} voxels changed",
             f"predicted Dice: {st['quality']['source']} ({st['quality']['reason']})"]
    if st["quality"].get("per_label"):
        pl = st["quality"]["per_label"]
        lines.append(f"per-label predicted Dice: {pl['source']} ({pl['reason']})")
    for k, v in st["effort"].items():
        if k.startswith("v"):
            d = ", ".join(f"{n} {x}" for n, x in v["dice_vs_prediction_mean"].items() if x is not None)
            lines.append(f"  corrections of model {k}: {v['corrections']}, mean {v['voxels_changed_mean']} voxels changed"
                         + (f", Dice vs prediction {d}" if d else ""))
    lines += [f"suspect: {s['case_id']} {s['name']} v{s['correction_version']} ({s['reason']})" for s in st["suspects"]]
    emit(args, st, "\n".join(lines))
    return 0


def cmd_check(args) -> int:
    with _open(args.workspace, readonly=not args.repair) as ws:
        rep = ws.check(repair=args.repair)
    res = rep.to_dict()
    if args.json:
        emit(args, res, "")
    else:
        if not rep.ok:
            for p in rep.problems[:20]:
                print(f"  {p}")
        print(rep.summary(), flush=True)
    return 0 if rep.ok else 1


def cmd_export(args) -> int:
    with _open(args.workspace, readonly=not (args.dicomweb or args.format)) as ws:  # DICOM exports are recorded
        prog = make_progress(args, "export")
        try:
            from . import dicomio
            if args.dicomweb:
                res = dicomio.export_dicomweb(ws, args, prog)
                emit(args, res, dicomio.export_summary(res))
                return 0
            if args.directory is None:
                raise HilaError("export: give the output folder, or --dicomweb URL")
            res = dicomio.export(ws, args, prog)
            if res is not None:
                emit(args, res, "\n".join(f"{f['case_id']} {f['name']}: {Path(f['file']).name}" for f in res["files"]))
                return 0
            res = ws.export(args.directory, include_unlabelled=args.all, progress=prog)
        finally:
            if hasattr(prog, "close"):
                prog.close()
    emit(args, res, f"exported {res['cases']} case(s), {res['labels']} label map(s), {res['segmentations']} "
                    f".seg.nrrd to {res['directory']} (manifest.json)")
    return 0


def cmd_models(args) -> int:
    with _open(args.workspace, readonly=args.action == "list") as ws:
        if args.action == "promote":
            if args.version is None:
                raise HilaError("models promote: give a VERSION")
            m = ws.promote(args.version)
            res = {"action": "promote", "current": m.version, "models": [x.to_dict() for x in ws.models()]}
            summary = f"model v{m.version} is now current"
        elif args.action == "rollback":
            m = ws.rollback()
            res = {"action": "rollback", "current": m.version, "models": [x.to_dict() for x in ws.models()]}
            summary = f"rolled back: model v{m.version} is current again"
        else:
            if args.version is not None:
                raise HilaError(f"models list: unexpected argument {args.version!r}")
            ms = ws.models()
            res = {"action": "list", "current": next((m.version for m in ms if m.status == "current"), None),
                   "models": [m.to_dict() for m in ms]}
            lines = []
            for m in ms:
                d = m.card.mean_dice()
                metric = "" if d is None else f"dice {round(d, 4)}"
                lines.append(f"v{m.version} {m.status:9s} {m.card.name} parent={m.parent} {metric}".rstrip())
            summary = "\n".join(lines) or "no models"
    emit(args, res, summary)
    return 0


def cmd_rank(args) -> int:
    from ..quality import ranking  # heavy (numpy, SimpleITK): `hila --help` stays fast

    if args.suspects:
        return _rank_suspects(args)
    with _open(args.workspace, readonly=True) as ws:
        ranked = ws.rank(by=args.by, seed=args.seed)
        cur = ws.current_model()
        source = ws.quality_source(cur.version if cur else None)
    res = {"by": args.by, "quality_source": source, "cases": ranked}
    if args.review_budget is not None:
        res["review_budget"] = budget = ranking.review_budget(ranked, args.review_budget)
        chosen = set(budget["cases"])
        ranked = [r for r in ranked if r["case_id"] in chosen]
    lines = []
    for r in ranked:
        dice = f"predicted Dice {r['predicted_dice']:.3f}" if r.get("predicted_dice") is not None else None
        need = "unpredicted" if not r["predicted"] else (dice or (
            f"need {r['review_need']:.3f}" if r["review_need"] is not None else "no uncertainty summary"))
        per = ", ".join(f"{lab['name']} {lab['predicted_dice']:.3f} ({lab['source']})" for lab in r.get("labels") or []
                        if lab["predicted_dice"] is not None)
        src = f" ({r['predicted_dice_source']})" if dice and r.get("predicted_dice_source") else ""
        lines.append(f"{r['rank']:3d}. {r['case_id']} {r['name']} ({r['state']}; {need}{src})" + (f": {per}" if per else ""))
    if args.review_budget is not None:
        b = res["review_budget"]
        lines.append(f"review budget {b['fraction']:g}: {len(b['cases'])} of {b['of_predicted']} predicted case(s); "
                     f"predicted cohort Dice {b['predicted_cohort_dice']} -> {b['predicted_cohort_dice_after']} "
                     "if they are reviewed")
    emit(args, res, "\n".join(lines) or "every case has a reviewed correction")
    return 0


def _rank_suspects(args) -> int:
    with _open(args.workspace, readonly=True) as ws:
        sus = ws.suspects()
    lines = [f"{i:3d}. {s['case_id']} {s['name']} v{s['correction_version']} {s['quality']} ({s['reason']})"
             for i, s in enumerate(sus, 1)]
    emit(args, {"suspects": sus}, "\n".join(lines) or "no suspect corrections")
    return 0
