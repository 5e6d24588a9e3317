"""Real PyTorch checkpoints for the `--pretrained` test (issue 18, item 3).

    python scripts/torch-checkpoints.py OUT_DIR

needs torch and torchvision (the venv of scripts/onnx-fixtures.sh has both).
Writes, with seed 0:

* resnet18.pth   a torchvision resnet18 state dict, float32, saved by
                 torch.save as PyTorch saves it (44.7 MB: made by the test,
                 not committed);
* resnet18.ckpt  the same weights as a Lightning-style checkpoint: the
                 state dict under "state_dict" with the "model." prefix,
                 beside epoch, global_step, hyper_parameters, optimizer_states;
* input.npy      a fixed (2, 5, 96, 96) float32 input;
* encoder.npy    torchvision's layer4 output for it (eval mode), with the
                 first convolution adapted to 5 bands as rstile documents
                 (src/train/pretrained.rs): band i < 3 takes RGB filter i,
                 bands 3 and 4 the mean of the three.

The batch-norm statistics and affine parameters are drawn at random (a
fresh torchvision network has mean 0, variance 1, weight 1, bias 0, which
would hide a mix-up), so eval-mode batch norm is exercised.
"""
import copy
import os
import sys

import numpy as np
import torch
import torchvision
from fixture_batchnorm import randomise_batch_norm

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
m = torchvision.models.resnet18(weights=None)
randomise_batch_norm(m)
sd = m.state_dict()
torch.save(sd, os.path.join(out, "resnet18.pth"))
ckpt = {
    "epoch": 3,
    "global_step": 120,
    "pytorch-lightning_version": "2.4.0",
    "state_dict": {"model." + k: v for k, v in sd.items()},
    "hyper_parameters": {"model": "resnet18", "in_channels": 3, "lr": 1e-3},
    "optimizer_states": [],
    "lr_schedulers": [],
}
torch.save(ckpt, os.path.join(out, "resnet18.ckpt"))

w = sd["conv1.weight"]
mean = w.mean(dim=1, keepdim=True)
m5 = copy.deepcopy(m)
m5.conv1 = torch.nn.Conv2d(5, 64, 7, 2, 3, bias=False)
with torch.no_grad():
    m5.conv1.weight.copy_(torch.cat([w, mean, mean], 1))
m5.eval()
trunk = torch.nn.Sequential(
    m5.conv1, m5.bn1, m5.relu, m5.maxpool, m5.layer1, m5.layer2, m5.layer3, m5.layer4
)
g = torch.Generator().manual_seed(1)
x = torch.randn(2, 5, 96, 96, generator=g)
with torch.no_grad():
    y = trunk(x)
np.save(os.path.join(out, "input.npy"), x.numpy())
np.save(os.path.join(out, "encoder.npy"), y.numpy())
print(f"wrote {out}: resnet18.pth, resnet18.ckpt, input.npy, encoder.npy {tuple(y.shape)}")
