"""Exports the ONNX benchmark networks and times onnxruntime and PyTorch on
them; benches/onnx_vs_ort.sh times rstile on the same files in the same run.

  python benches/onnx_vs_ort.py export DIR
  python benches/onnx_vs_ort.py time DIR NAME BATCH SIZE THREADS ITERS

The networks, at full width with random seeded weights: smp Unet with a
resnet34 encoder and torchvision's deeplabv3_resnet50, both with 6 classes
and 3 bands, exported by torch.onnx.export (TorchScript exporter, opset 17)
with a dynamic batch and fixed SIZE x SIZE windows, with Deepness metadata
so that rstile needs no flags.
"""

import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn

NETS = ["unet_resnet34", "deeplabv3_resnet50"]


class OnlyOut(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def build(name):
    torch.manual_seed(0)
    if name == "unet_resnet34":
        import segmentation_models_pytorch as smp
        return smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=6).eval()
    import torchvision
    m = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=6, aux_loss=False)
    return OnlyOut(m).eval()


def export(out, size):
    import onnx
    for name in NETS:
        path = f"{out}/{name}.onnx"
        torch.onnx.export(build(name), (torch.zeros(1, 3, size, size),), path, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        m = onnx.load(path)
        for k, v in {"model_type": "Segmentor", "tiles_size": size, "tiles_overlap": 25,
                     "class_names": {i: f"class {i}" for i in range(6)}}.items():
            m.metadata_props.add(key=k, value=json.dumps(v))
        onnx.save(m, path)


def best(f, iters):
    f()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def time_one(out, name, batch, size, threads, iters):
    import onnxruntime as ort
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(f"{out}/{name}.onnx", so, providers=["CPUExecutionProvider"])
    t_ort = best(lambda: s.run(None, {"input": x}), iters)
    torch.set_num_threads(threads)
    model = build(name)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        t_torch = best(lambda: model(xt), iters)
    print(json.dumps({"ort_s": t_ort, "torch_s": t_torch}))


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 512)
    else:
        _, _, out, name, batch, size, threads, iters = sys.argv
        time_one(out, name, int(batch), int(size), int(threads), int(iters))
