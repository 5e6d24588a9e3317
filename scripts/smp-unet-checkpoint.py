"""A real segmentation_models_pytorch checkpoint for `rstile model import`
(issue 15):

    python scripts/smp-unet-checkpoint.py OUT_DIR [ENCODER]

needs torch and segmentation-models-pytorch (the venv of
scripts/onnx-fixtures.sh). Writes, with seed 0, smp's Unet on ENCODER
(default resnet18; 6 classes, 3 bands, random weights with random batch-norm
statistics so that eval-mode batch norm is exercised):

* unet.pth   its state dict, as torch.save writes it;
* unet.ckpt  the same as a Lightning checkpoint (state_dict, "model." prefix,
             TorchGeo's hyper_parameters);
* unet-norm.ckpt  the same with a mean and std in its hyper_parameters;
* input.npy  a fixed (2, 3, 96, 96) input;
* output.npy smp's logits for it, in eval mode.

The files (57 MB for resnet18) are made by the test, not committed.
"""
import os
import sys

import numpy as np
import segmentation_models_pytorch as smp
import torch
from fixture_batchnorm import randomise_batch_norm

out = sys.argv[1]
encoder = sys.argv[2] if len(sys.argv) > 2 else "resnet18"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
m = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=6)
randomise_batch_norm(m)
sd = m.state_dict()
torch.save(sd, os.path.join(out, "unet.pth"))
# TorchGeo's SemanticSegmentationTask hyperparameters (a plain dict, as
# Lightning saves dict(hparams)); the second file adds a normalisation
hp = {"model": "unet", "backbone": encoder, "weights": None, "in_channels": 3,
      "num_classes": 6, "loss": "ce", "class_weights": None, "lr": 0.001}
state = {"model." + k: v for k, v in sd.items()}
torch.save({"epoch": 2, "global_step": 50, "state_dict": state, "hyper_parameters": hp},
           os.path.join(out, "unet.ckpt"))
torch.save({"epoch": 2, "global_step": 50, "state_dict": state,
            "hyper_parameters": dict(hp, mean=[10.0, 20.0, 30.0], std=[2.0, 3.0, 4.0])},
           os.path.join(out, "unet-norm.ckpt"))
x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    y = m(x)
np.save(os.path.join(out, "input.npy"), x.numpy())
np.save(os.path.join(out, "output.npy"), y.numpy())
print(f"smp {smp.__version__} Unet({encoder}): wrote {out}")
