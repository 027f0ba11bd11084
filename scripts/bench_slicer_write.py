#!/usr/bin/env python3
"""The GUI-thread part of one AI result in Slicer, measured on real MRML nodes (slicer-core, the real-MRML tier).

    .venv-slicer/bin/python scripts/bench_slicer_write.py [--work DIR] [--modes M,M] [--repeat N] [--starts]

Set-up (cached in --work): the real pelvic CT (../shared/data/pelvic_ct_dicom/Pelvic-Ref002, 512x512x163) as a
volume node; its RTSTRUCT converted with `hila convert --structures all` (16 structures) as the volume's existing
segmentation; the RTSTRUCT's deep-learning contour set (`--structures DL`: prostate, bladder, rectum, femoral
heads) as the AI result, written the way the Segment child (`hila infer WS CASE --out`) writes its result: a
workspace's labels, cut to the result's voxels (``Workspace.prediction_segmentation``, the child's own function).
Measured: what the panel's SegmentSection.finish runs on the GUI thread, ``HILASegmentLogic.loadResult`` (read the
result, write it into the volume's segmentation under the Segment Editor's mask mode; the child has recorded the
prediction already), per mask mode in a fresh process: seconds, the GUI thread's own CPU seconds (``gui_cpu_seconds``, time.thread_time,
which contention on a shared machine does not inflate) and the peak extra resident memory over the process
before the call (RSS sampled every 5 ms; SimpleITK and the engine's reader imported before, as after a session's
first result: that import is a one-time ~0.3-0.5 s); ``again``: a second result onto the first (the segments it replaces exist).
Accept's run also times, in the same process, what Accept did on the GUI thread before its label export moved into
the job (``before_seconds``, ``before_gui_cpu_seconds``, ``before_peak_extra_mb``; ``ratio_wall``/``ratio_cpu``: the GUI-thread part now over then, wall and this thread's
CPU time, which contention on a shared machine does not inflate). ``--starts``: only the GUI-thread part of starting
Segment and Accept on a volume that is no case, against the uncompressed writes the GUI thread did before
(``measure_starts``). Prints one JSON line per run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HILA_SHARED_DATA", ROOT.parent / "shared" / "data"))
DICOM = DATA / "pelvic_ct_dicom" / "Pelvic-Ref002"


def engine(*args: str) -> None:
    """The engine CLI in a child, from the main environment when there is one (it has the DICOM extra)."""
    python = ROOT / ".venv" / "bin" / "python"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    subprocess.run([str(python if python.exists() else sys.executable), "-m", "HILASegmentLib", *args], check=True,
                   env=env, stdout=subprocess.DEVNULL)


def prepare(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "ct.nrrd").exists():
        engine("convert", str(DICOM), str(work / "ct.nrrd"))
    if not (work / "existing.seg.nrrd").exists():
        rs = next(DICOM.glob("RS*.dcm"))
        engine("convert", str(rs), str(work / "existing.seg.nrrd"), "--structures", "all", "--reference", str(DICOM))
    if not (work / "result.seg.nrrd").exists():  # the RTSTRUCT's deep-learning auto-contours: a real AI result
        rs = next(DICOM.glob("RS*.dcm"))
        engine("convert", str(rs), str(work / "result.seg.nrrd"), "--structures", "DL", "--reference", str(DICOM))
    if not (work / "child.seg.nrrd").exists():
        engine_python("scripts/bench_slicer_write.py", "--work", str(work), "--child-file")


#: The DL contour set's structures -> the benchmark workspace's labels.
LABELS = {"Prostate_DL": "prostate", "Bladder_DL": "bladder", "Anorectum_DL": "rectum",
          "Femur_Head_L_DL": "femoral head left", "Femur_Head_R_DL": "femoral head right"}


def child_file(work: Path) -> None:
    """The result as the Segment child writes it (``Workspace.prediction_segmentation``), in a workspace of the CT."""
    import numpy as np
    import SimpleITK as sitk

    from HILASegmentLib.formats.segfile import read_segmentation, write_segmentation
    from HILASegmentLib.workspace import Workspace

    ws_path = work / "ws"
    ws = Workspace.open(ws_path) if ws_path.exists() else Workspace.create(ws_path, "CT", list(LABELS.values()))
    with ws:
        if not ws.cases():
            ws.import_volume(work / "ct.nrrd")
        dl = read_segmentation(work / "result.seg.nrrd")
        values = {lab.name: lab.value for lab in ws.settings.labels}
        label = np.zeros(sitk.GetArrayViewFromImage(dl.grid).shape, np.uint8)
        for s in dl.segments:
            label[dl.mask_array(s.id)] = values[LABELS[s.name]]
        image = sitk.GetImageFromArray(label)
        image.CopyInformation(dl.grid)
        write_segmentation(ws.prediction_segmentation(image, {"HILA.model": "RTSTRUCT DL contours"}), work / "child.seg.nrrd")


def engine_python(*args: str) -> None:
    python = ROOT / ".venv" / "bin" / "python"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "HILASegment"))
    subprocess.run([str(python if python.exists() else sys.executable), *args], check=True, env=env, cwd=ROOT)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """The peak extra resident memory (MB) over the process while the ``with`` block runs (RSS sampled every 5 ms)."""

    def __enter__(self) -> "PeakRss":
        self.base, self.peak, self._stop = rss_mb(), rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def extra_mb(self) -> float:
        return round(self.peak - self.base, 1)


def measure(work: Path, mode: str, again: bool = False, accept: bool = False) -> dict:
    """One run in this process: set the scene up, then time loadResult alone with an RSS sampler running (``accept``:
    load the result first, then time the GUI-thread part of Accept, ``HILASegmentLogic.startAccept``: the checks, the
    label map from the segments, the label file and Slicer's uncompressed copy; the child's part is not timed)."""
    sys.path.insert(0, str(ROOT / "Testing" / "mrml"))
    import slicer
    from realscene import RealScene, import_module_file, load_volume, read_segmentation

    from HILASegmentLib.formats import segfile  # noqa: F401  SimpleITK and the reader: loaded once a session, not per result
    from HILASegmentSlicerLib import segments

    scene = RealScene()  # kept: its application logic owns the logics the nodes use
    volume = load_volume(work / "ct.nrrd", "ct")
    existing = read_segmentation(work / "existing.seg.nrrd", "ct segmentation")
    volume.SetNodeReferenceID(segments.SEGMENTATION_REFERENCE, existing.GetID())
    existing.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    logic = import_module_file().HILASegmentLogic()
    editor = logic.segmentEditorNode()
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.ConvertMaskModeFromString(mode))
    segNode = segments.segmentation_for(slicer.mrmlScene, volume)
    if accept:
        from HILASegmentLib.workspace import Workspace
        slicer.util.startupEnvironment = lambda: dict(os.environ)
        ws = Workspace.open(work / "ws")
        logic.tagCase(ws, volume, ws.cases()[0].case_id)
        logic.loadResult(str(work / "child.seg.nrrd"), segNode, volume, editor)
    if again:  # the segments this result replaces exist (a second Segment of the case)
        logic.loadResult(str(work / "child.seg.nrrd"), segNode, volume, editor)
    before_segments = segNode.GetSegmentation().GetNumberOfSegments()
    extra = {}
    with PeakRss() as memory:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        if accept:
            _runner, context = logic.startAccept(ws, volume, segNode)
        else:
            report = logic.loadResult(str(work / "child.seg.nrrd"), segNode, volume, editor)
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    extra["gui_cpu_seconds"] = round(cpu, 3)
    if accept:
        report = type("R", (), dict(names=["accept"], clipped_total=0))
        logic.cleanupJob(context)
        extra.update(before_in_this_process(logic, ws, volume, segNode, seconds, cpu))
    return {"mode": mode, "again": again, "accept": accept, "seconds": round(seconds, 2), "peak_extra_mb": memory.extra_mb,
            "existing_segments": before_segments, "shape": list(slicer.util.arrayFromVolume(volume).shape),
            "written": report.names, "clipped_voxels": report.clipped_total,
            "scene": scene.scene.GetNumberOfNodes() > 0, **extra}


def before_in_this_process(logic, ws, volume, segNode, seconds: float, cpu: float) -> dict:
    """What Accept did on the GUI thread before its label export moved into the job, timed in this same process
    (the same scene, right after the new part, so contention hits both alike): the checks and the merged label map
    (``segments.label_array_from_segmentation``, the layers merged at the volume's size), the image and its
    uncompressed write. Returns those seconds, this thread's CPU seconds, the peak extra resident memory
    (``before_peak_extra_mb``: a floor, since memory the new part freed may be reused without growing the RSS) and the
    ratios new/before (wall and this thread's CPU)."""
    import tempfile

    import vtk

    from HILASegmentLib.formats.imageio import write_image
    from HILASegmentSlicerLib import cases, mrmlgeometry, segments
    with PeakRss() as memory:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        cases.own_case(ws, volume)
        array = segments.label_array_from_segmentation(logic.util, segNode, volume, ws.settings.labels, vtk.mutable)
        with tempfile.TemporaryDirectory() as folder:
            write_image(mrmlgeometry.array_to_image(array, logic.ijkToRas(volume)), os.path.join(folder, "label.nrrd"),
                        compress=False)
        before, before_cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        del array
    return {"before_seconds": round(before, 3), "before_gui_cpu_seconds": round(before_cpu, 3),
            "before_peak_extra_mb": memory.extra_mb,
            "ratio_wall": round(seconds / before, 3), "ratio_cpu": round(cpu / before_cpu, 3)}


def measure_starts(work: Path) -> dict:
    """The GUI-thread part of starting Segment and Accept on a volume that is no workspace case (the CT, its 16
    existing segments), and, in this same process, what the GUI thread did before that work moved into the job:
    the volume written uncompressed for `hila infer --image`, the segmentation written uncompressed by Slicer's
    storage node for the copy. Seconds (wall and this thread's CPU) and the ratios now/before."""
    import tempfile

    sys.path.insert(0, str(ROOT / "Testing" / "mrml"))
    import slicer
    from realscene import RealScene, import_module_file, load_volume, read_segmentation, save_segmentation

    from HILASegmentLib.formats.imageio import write_image
    from HILASegmentLib.workspace import Workspace
    from HILASegmentSlicerLib import segments

    scene = RealScene()
    slicer.util.startupEnvironment = lambda: dict(os.environ)
    volume = load_volume(work / "ct.nrrd", "ct")
    existing = read_segmentation(work / "existing.seg.nrrd", "ct segmentation")
    volume.SetNodeReferenceID(segments.SEGMENTATION_REFERENCE, existing.GetID())
    logic = import_module_file().HILASegmentLogic()
    ws = Workspace.open(work / "ws")

    def timed(fn):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        return time.perf_counter() - t0, time.thread_time() - c0
    out = {"scene": scene.scene.GetNumberOfNodes() > 0}
    now, before, contexts = {}, {}, []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(3):  # alternating, the fastest of three each: a shared machine's stalls hit both alike
            for key, fn, old in (
                    ("segment", lambda: contexts.append(logic.startSegmentation(volume, "pelvic_ct_unet")[1]),
                     lambda: write_image(logic.volumeToImage(volume), os.path.join(folder, "i.nrrd"), compress=False)),
                    ("accept", lambda: contexts.append(logic.startAccept(ws, volume, existing)[1]),
                     lambda: save_segmentation(existing, os.path.join(folder, "raw.seg.nrrd"), compress=False))):
                before[key] = min(before.get(key, (1e9, 1e9)), timed(old))
                now[key] = min(now.get(key, (1e9, 1e9)), timed(fn))
                for context in contexts:
                    logic.cleanupJob(context)
                contexts.clear()
    for key in now:
        out[key] = {"seconds": round(now[key][0], 3), "gui_cpu_seconds": round(now[key][1], 3),
                    "before_seconds": round(before[key][0], 3), "before_gui_cpu_seconds": round(before[key][1], 3),
                    "ratio_wall": round(now[key][0] / before[key][0], 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/hila-bench-slicer-write")
    ap.add_argument("--modes", default="EditAllowedEverywhere,EditAllowedInsideAllSegments,EditAllowedOutsideVisibleSegments")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    ap.add_argument("--again", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--accept", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-file", action="store_true", help=argparse.SUPPRESS)  # internal: in the main environment
    ap.add_argument("--starts", action="store_true",
                    help="only: the GUI-thread part of starting Segment and Accept on a volume that is no case")
    args = ap.parse_args()
    work = Path(args.work)
    if args.child_file:
        child_file(work)
        return 0
    if args.one:
        print(json.dumps(measure(work, args.one, args.again, args.accept)))
        return 0
    prepare(work)
    if args.starts:
        print(json.dumps(measure_starts(work)))
        return 0
    for mode in args.modes.split(","):
        for again in (False, True):
            for _ in range(args.repeat):  # a fresh process per run: nothing cached, the peak is this run's
                out = subprocess.run([sys.executable, __file__, "--work", str(work), "--one", mode]
                                     + (["--again"] if again else []), capture_output=True, text=True)
                print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr[-500:]}",
                      flush=True)
    for _ in range(args.repeat):  # Accept's GUI-thread part, after one result
        out = subprocess.run([sys.executable, __file__, "--work", str(work), "--one", "EditAllowedEverywhere", "--accept"],
                             capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr[-500:]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
