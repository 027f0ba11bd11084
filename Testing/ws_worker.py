"""A helper process for the workspace durability tests (run as a real, separate process).

    python ws_worker.py submit WORKSPACE CASE LABELFILE COUNT [QUALITY]
    python ws_worker.py forkserver WORKSPACE CASE LABELFILE

``submit`` opens the workspace, prints ``READY``, then submits LABELFILE COUNT times, printing
``OK <correction_id> <case_id> <version> <sha256>`` (flushed) after each submission returned.
The parent kills it at random moments and then checks that every OK line is in the ledger.

``forkserver`` imports everything once, then for each ``go OUTFILE`` line on stdin forks a child
that does what ``submit`` does (output to OUTFILE, forever) and answers ``PID <pid>``; ``reap PID``
waits for that child and answers ``STATUS <raw wait status>``. The children are real processes
that open their own ledger connection, so killing one is a real SIGKILL of a submitter, without
paying Python's start-up for each of the many kills.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HILASegment"))

import hashlib  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from HILASegmentLib.workspace import Workspace  # noqa: E402

# -- small synthetic fixtures and state snapshots, shared by the workspace tests -------------------

def make_volume(path, size=(32, 32, 24), spacing=(1.0, 1.0, 2.0), origin=(-10.0, 5.0, 3.0), seed=0):
    """A small int16 'CT' with a bright blob; returns the image (also written to ``path``)."""
    rng = np.random.RandomState(seed)
    arr = rng.randint(-50, 50, size[::-1]).astype(np.int16)
    arr[6:14, 8:20, 8:20] += 400
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return img


def make_label(reference, path=None, boxes=None):
    """A label map on ``reference``'s grid: ``boxes`` maps value -> (z0, z1, y0, y1, x0, x1)."""
    boxes = boxes or {1: (6, 14, 8, 20, 8, 20), 2: (2, 5, 2, 10, 2, 10)}
    arr = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    for v, (z0, z1, y0, y1, x0, x1) in boxes.items():
        arr[z0:z1, y0:y1, x0:x1] = v
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    if path is not None:
        sitk.WriteImage(img, str(path))
    return img


def ledger_dump(root):
    """Every row of every table of a workspace's ledger (read with plain sqlite3, any schema version)."""
    con = sqlite3.connect(f"file:{Path(root) / 'hila.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out = {t: con.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
        out["user_version"] = con.execute("PRAGMA user_version").fetchone()[0]
        return out
    except sqlite3.DatabaseError:
        # A damaged ledger cannot be read row by row; "unchanged" then means the same bytes on disk.
        return {"unreadable": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                               for p in sorted(Path(root).glob("hila.sqlite*"))}}
    finally:
        con.close()


def file_tree(root):
    """``{relative path: sha256}`` of every file under ``root`` except the ledger's own files."""
    out = {}
    root = Path(root)
    if not root.exists():
        return out
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[str((Path(dirpath) / d).relative_to(root)) + "/"] = "dir"
        for f in files:
            p = Path(dirpath) / f
            rel = str(p.relative_to(root))
            if rel.startswith("hila.sqlite"):
                continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def state(root):
    """The whole observable state of a workspace folder: ledger rows and files."""
    has_ledger = (Path(root) / "hila.sqlite").is_file()
    return (ledger_dump(root) if has_ledger else None, file_tree(root))


def submit_loop(ws_path, case, label_file, count, quality, out):
    ws = Workspace.open(ws_path)
    label = sitk.ReadImage(label_file)
    out.write("READY\n")
    out.flush()
    for _ in range(int(count)):
        c = ws.submit(case, label, quality=quality, annotator="worker")
        out.write(f"OK {c.correction_id} {c.case_id} {c.version} {c.sha256}\n")
        out.flush()
    ws.close()


def forkserver(ws_path, case, label_file, quality):
    import HILASegmentLib.formats.imageio  # noqa: F401  (what a submission imports lazily, imported once here)
    import HILASegmentLib.formats.segfile  # noqa: F401
    print("READY", flush=True)
    for line in sys.stdin:
        cmd, arg = line.split()
        if cmd == "go":
            pid = os.fork()
            if pid == 0:  # the child: a submitter until it is killed
                try:
                    with open(arg, "w", encoding="utf-8") as out:
                        submit_loop(ws_path, case, label_file, 10**9, quality, out)
                finally:
                    os._exit(0)
            print(f"PID {pid}", flush=True)
        elif cmd == "reap":
            _, status = os.waitpid(int(arg), 0)
            print(f"STATUS {status}", flush=True)
    return 0


def main(argv):
    cmd = argv[0]
    if cmd == "submit":
        ws_path, case, label_file, count = argv[1:5]
        submit_loop(ws_path, case, label_file, count, argv[5] if len(argv) > 5 else "rough", sys.stdout)
        return 0
    if cmd == "forkserver":
        ws_path, case, label_file = argv[1:4]
        return forkserver(ws_path, case, label_file, argv[4] if len(argv) > 4 else "rough")
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
