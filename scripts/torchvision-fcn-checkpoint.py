"""A real torchvision fcn_resnet50 checkpoint for `rstile model import
--from torchvision --arch resnet50-fcn-os8`:

    python scripts/torchvision-fcn-checkpoint.py OUT_DIR

needs torch and torchvision (the venv of scripts/onnx-fixtures.sh). Writes,
with seed 0, torchvision's fcn_resnet50(weights=None, weights_backbone=None,
num_classes=6, aux_loss=True) (random weights with random batch-norm
statistics so that eval-mode batch norm is exercised):

* fcn.pth          its state dict, as torch.save writes it (aux_classifier.*
                   included);
* fcn.ckpt         the same as a Lightning checkpoint (state_dict, "model."
                   prefix);
* fcn-missing.pth  the state dict without backbone.layer4.1.conv2.weight;
* input.npy        a fixed (2, 3, 96, 96) input, and output.npy, the model's
                   model(x)["out"] for it in eval mode;
* input-odd.npy    a fixed (1, 3, 75, 53) input (sizes that are not
                   multiples of 8), and output-odd.npy.

The files (140 MB) are made by the test, not committed.
"""
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.segmentation import fcn_resnet50
from fixture_batchnorm import randomise_batch_norm

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
m = fcn_resnet50(weights=None, weights_backbone=None, num_classes=6, aux_loss=True)
randomise_batch_norm(m)
sd = m.state_dict()
assert any(k.startswith("aux_classifier.") for k in sd), "aux_loss=True keeps aux_classifier"
torch.save(sd, os.path.join(out, "fcn.pth"))
torch.save(
    {"epoch": 1, "global_step": 10, "state_dict": {"model." + k: v for k, v in sd.items()},
     "hyper_parameters": {"model": "fcn", "backbone": "resnet50", "num_classes": 6}},
    os.path.join(out, "fcn.ckpt"),
)
missing = {k: v for k, v in sd.items() if k != "backbone.layer4.1.conv2.weight"}
assert len(missing) == len(sd) - 1
torch.save(missing, os.path.join(out, "fcn-missing.pth"))
for name, shape, seed in [("", (2, 3, 96, 96), 1), ("-odd", (1, 3, 75, 53), 2)]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = m(x)["out"]
    np.save(os.path.join(out, f"input{name}.npy"), x.numpy())
    np.save(os.path.join(out, f"output{name}.npy"), y.numpy())
print(f"torchvision {torchvision.__version__} fcn_resnet50: wrote {out}")
