"""The PyTorch peer of `rstile model bench`: the same architecture, input,
batch, threads and timing rules, printed as one JSON object.

`--arch unet-resnetN` is segmentation_models_pytorch's Unet on resnetN (no
pretrained weights), what rstile's unet-resnetN is.

resnet50-fcn is torchvision's resnet50 encoder (stride 32, no dilation),
torchvision's FCNHead(2048, classes) on layer4 and a bilinear upsample to
the input size, which is what rstile's resnet50-fcn is. Forward: eval mode,
no_grad, logits. Train step: train mode, cross-entropy, backward, AdamW
(PyTorch defaults, weight decay 0.01).
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.fcn import FCNHead


class Fcn(torch.nn.Module):
    def __init__(self, depth, bands, classes):
        super().__init__()
        r = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if bands != 3:
            r.conv1 = torch.nn.Conv2d(bands, 64, 7, 2, 3, bias=False)
        self.backbone = torch.nn.Sequential(
            r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4
        )
        self.classifier = FCNHead(2048 if depth == 50 else 512, classes)

    def forward(self, x):
        h, w = x.shape[-2:]
        y = self.classifier(self.backbone(x))
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


def timed(n, f):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return sorted(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50-fcn")
    p.add_argument("--bands", type=int, default=3)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.arch.startswith("unet-"):
        import segmentation_models_pytorch as smp

        m = smp.Unet(
            encoder_name=a.arch[len("unet-"):],
            encoder_weights=None,
            in_channels=a.bands,
            classes=a.classes,
        )
    else:
        depth = int(a.arch.split("-")[0][len("resnet"):])
        m = Fcn(depth, a.bands, a.classes)
    x = torch.randn(a.batch, a.bands, a.size, a.size)
    m.eval()

    def fwd():
        with torch.no_grad():
            m(x)

    timed(a.warmup, fwd)
    f = timed(a.iters, fwd)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "forward_min_s": f[0],
        "forward_median_s": f[len(f) // 2],
    }
    if a.train:
        m.train()
        labels = (torch.arange(a.batch * a.size * a.size) * 7 % a.classes).reshape(
            a.batch, a.size, a.size
        )
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), labels)
            loss.backward()
            opt.step()

        timed(a.warmup, step)
        t = timed(a.iters, step)
        out["train_step_min_s"] = t[0]
        out["train_step_median_s"] = t[len(t) // 2]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
