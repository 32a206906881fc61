"""``veloxseg export``: the deployable network as ONNX, a compiled ``.pt2`` package or TorchScript, with a JSON sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = sub.add_parser("export", help="export the deployable network to ONNX, a compiled .pt2 package or TorchScript",
                       description="Export the network without its training-only parts; FILE.json beside it keeps "
                                   "the preprocessing plan, labels and channel names, so `veloxseg predict -m FILE` "
                                   "runs the whole pipeline. The export is checked against PyTorch before it is kept.")
    p.add_argument("-m", "--model", required=True, type=Path, help="checkpoint (.pt from veloxseg train)")
    p.add_argument("--format", required=True, choices=("onnx", "pt2", "torchscript"),
                   help="onnx: torch.export-based ONNX (onnxruntime); pt2: torch.export + AOTInductor, native code "
                        "for this CPU (needs a C++ compiler; load only packages you built); torchscript: deprecated "
                        "by PyTorch, kept while torch ships it. Channels and window fixed, batch dynamic")
    p.add_argument("-o", "--output", required=True, type=Path, help="model file to write (e.g. model.onnx, model.pt2)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing file that is not an earlier veloxseg export (never the checkpoint itself)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export ``args.model`` to ``args.output``."""
    from ..export import export_checkpoint

    result = export_checkpoint(args.model, args.format, args.output, args.opset, overwrite=args.overwrite)
    print(f"wrote {result.model_path} ({args.format}) and {result.sidecar_path}")
    print(f"check against PyTorch: max |logit difference| {result.max_abs_logit_diff:.2e}, "
          f"argmax agreement {result.argmax_agreement:.4%}")
    return 0
