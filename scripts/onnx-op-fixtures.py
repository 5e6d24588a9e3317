"""Op-coverage fixtures for tests/onnx.rs: tests/fixtures/onnx-ops/.

One small network ("mix") that uses the rarer ops and attributes the
smp/torchvision fixtures (scripts/onnx-fixtures.*) may not: BN after a
bias-less conv, depthwise dilated conv, GroupNorm and InstanceNorm,
ConvTranspose with and without output_padding, MaxPool with ceil_mode,
AveragePool with count_include_pad=False, ReLU6 (Clip), HardSwish,
HardSigmoid, global pooling, nearest and bilinear (align_corners True and
False) resizes, softmax output. Exported with the TorchScript exporter at
opsets 13 and 17 and with the dynamo exporter at opset 18; the reference
output is onnxruntime's.

Run by hand, not by CI, in a venv with torch, onnx, onnxruntime and
onnxscript (the PyPI wheels):
    python scripts/onnx-op-fixtures.py tests/fixtures/onnx-ops mix mixdyn
("tv" also exports full-size torchvision networks, too large to commit.)
"""
import sys, os
import torch, torch.nn as nn, torch.nn.functional as F, numpy as np
import onnxruntime as ort
torch.manual_seed(0)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)

class Mix(nn.Module):
    def __init__(s, c=4, k=5):
        super().__init__()
        s.c1 = nn.Conv2d(c, 16, 3, padding=1, bias=False); s.b1 = nn.BatchNorm2d(16)
        s.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        s.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
        s.gn = nn.GroupNorm(4, 16); s.inorm = nn.InstanceNorm2d(16, affine=True)
        s.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        s.up2 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        s.head = nn.Conv2d(24, k, 1)
        for b in [s.b1]:
            b.running_mean.uniform_(-0.5, 0.5); b.running_var.uniform_(0.5, 2); b.weight.data.uniform_(0.5,1.5); b.bias.data.uniform_(-.5,.5)
    def forward(s, x):
        y = F.relu(s.b1(s.c1(x)))
        z = s.c2(y)
        z = z + F.relu6(s.dw(z))
        z = s.gn(z) * torch.sigmoid(s.inorm(z))
        z = F.hardswish(z) + F.hardsigmoid(z)
        p = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        p2 = F.avg_pool2d(y, 3, 2, 1, count_include_pad=False)
        g = F.adaptive_avg_pool2d(z, 1)
        z = z * g + p[..., :z.shape[2], :z.shape[3]] + p2
        a = s.up(z)
        b = F.interpolate(s.up2(z), size=y.shape[-2:], mode="bilinear", align_corners=True)
        c = F.interpolate(z[:, :8], scale_factor=2, mode="nearest")
        d = F.interpolate(z[:, 8:], size=y.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(s.head(torch.cat([a + b, c, d], 1)), 1)

def export(name, model, shape, dynamo=False, opset=17, external=False):
    model.eval()
    x = torch.randn(*shape)
    path = f"{out}/{name}.onnx"
    kw = dict(input_names=["input"], output_names=["output"], opset_version=opset)
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch")}} if False else None, external_data=external, **kw)
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **kw)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        t = model(x)
        t = t["out"] if isinstance(t, dict) else t
    print(name, y.shape, "ort vs torch", float(np.abs(y - t.numpy()).max()))
    np.save(f"{out}/{name}.input.npy", x.numpy())
    np.save(f"{out}/{name}.output.npy", y)

which = sys.argv[2:] 
if "mix" in which:
    export("mix_ts13", Mix(), (2, 4, 32, 32), opset=13)
    export("mix_ts17", Mix(), (2, 4, 32, 32), opset=17)
if "mixdyn" in which:
    export("mix_dyn18", Mix(), (2, 4, 32, 32), dynamo=True, opset=18)
if "tv" in which:
    import torchvision
    m = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    class W(nn.Module):
        def __init__(s, m): super().__init__(); s.m = m
        def forward(s, x): return s.m(x)["out"]
    export("lraspp_ts17", W(m), (1, 3, 64, 64), opset=17)
    m = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    export("fcn50_ts17", W(m), (1, 3, 64, 64), opset=17)
    m = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    export("dlv3_ts17", W(m), (1, 3, 64, 64), opset=17)
    export("dlv3_dyn18", W(m), (1, 3, 64, 64), opset=18, dynamo=True, external=True)
