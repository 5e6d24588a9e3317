#!/usr/bin/env python3
"""Makes the ONNX model fixtures of tests/fixtures/onnx/ (issue 14).

Run by hand, not by CI: `bash scripts/onnx-fixtures.sh` builds the venv
(torch, torchvision, segmentation-models-pytorch, onnx, onnxruntime,
onnxscript from PyPI) and runs this script.

Every fixture is a real export, by `torch.onnx.export`, of a real smp or
torchvision network with random seeded weights. To keep the files small
(at most 15 MB in all), the ResNet encoders keep their depth (resnet18:
2-2-2-2 basic blocks, resnet34: 3-4-6-3, resnet50: 3-4-6-3 bottlenecks) and
torchvision's own code, but every stage is 16 times narrower (the stem 4 times), and the
decoders have few channels. For each fixture NAME it writes:

- NAME.onnx (and NAME.onnx.data when the weights are external data);
- NAME.input.npy: a seeded f32 input, NCHW;
- NAME.output.npy: onnxruntime's output on it (CPU execution provider);

and manifest.json: per fixture the network, encoder, bands, classes,
exporter, opset, output kind, the metadata written, and the op histogram.
Also a few broken models for the bad-input tests (bad_*.onnx).
"""

import argparse
import collections
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torchvision
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
from torchvision.models.segmentation.fcn import FCN, FCNHead
from torchvision.models._utils import IntermediateLayerGetter

NARROW = 16  # every ResNet stage is this many times narrower


STEM = 16  # the stem's channels (torchvision: 64)


def narrow_stem(net):
    """Gives a torchvision ResNet built with narrow stages a narrow stem:
    conv1 and bn1 with STEM channels, and layer1's first block reading them."""
    net.conv1 = nn.Conv2d(3, STEM, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(STEM)
    first = net.layer1[0]
    first.conv1 = nn.Conv2d(STEM, first.conv1.out_channels, first.conv1.kernel_size,
                            first.conv1.stride, first.conv1.padding, bias=False)
    ds = first.downsample[0]
    first.downsample[0] = nn.Conv2d(STEM, ds.out_channels, 1, ds.stride, bias=False)


class NarrowResNetEncoder(ResNetEncoder):
    """smp's ResNet encoder (torchvision's ResNet) with narrow stages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        narrow_stem(self)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        return super()._make_layer(block, planes // NARROW, blocks, stride, dilate)


class NarrowResNet(torchvision.models.resnet.ResNet):
    """torchvision's ResNet with narrow stages, for its segmentation models."""

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        return super()._make_layer(block, planes // NARROW, blocks, stride, dilate)


def stage_channels(expansion):
    return [3, STEM] + [64 // NARROW * expansion * m for m in (1, 2, 4, 8)]


for name, block, layers in [
    ("resnet18", BasicBlock, [2, 2, 2, 2]),
    ("resnet34", BasicBlock, [3, 4, 6, 3]),
    ("resnet50", Bottleneck, [3, 4, 6, 3]),
]:
    smp_encoders["narrow-" + name] = {
        "encoder": NarrowResNetEncoder,
        "pretrained_settings": {},
        "params": {
            "out_channels": stage_channels(block.expansion),
            "block": block,
            "layers": layers,
        },
    }

SIZE = 64  # window side: a multiple of 32
PSP_SIZE = 96  # PSPNet pools its 1/8 map into 1, 2, 3 and 6 bins
BATCH = 2  # for the fixtures named in TWO_WINDOWS; the others hold one
TWO_WINDOWS = ("smp_unet_resnet18_3b_ts13", "tv_fcn_resnet50_ts17", "smp_fpn_resnet18_3b_dynamo18")
CLASSES = 6

DEEPNESS = {
    "model_type": json.dumps("Segmentor"),
    "class_names": json.dumps(
        {str(i): n for i, n in enumerate(
            ["impervious", "building", "low_vegetation", "tree", "car", "clutter"])}
    ),
    "tiles_size": json.dumps(SIZE),
    "tiles_overlap": json.dumps(25),
    "standardization_mean": json.dumps([0.485, 0.456, 0.406]),
    "standardization_std": json.dumps([0.229, 0.224, 0.225]),
    "resolution": json.dumps(10),
}


def smp_model(arch, encoder, bands, classes=CLASSES, activation=None):
    common = dict(encoder_name="narrow-" + encoder, encoder_weights=None,
                  in_channels=bands, classes=classes, activation=activation)
    if arch == "Unet":
        return smp.Unet(decoder_channels=(16, 16, 8, 8, 8), **common)
    if arch == "UnetPlusPlus":
        return smp.UnetPlusPlus(decoder_channels=(8, 8, 8, 8, 8), **common)
    if arch == "FPN":
        return smp.FPN(decoder_pyramid_channels=32, decoder_segmentation_channels=32, **common)
    if arch == "Linknet":
        return smp.Linknet(**common)
    if arch == "PSPNet":
        return smp.PSPNet(psp_out_channels=32, **common)
    if arch == "DeepLabV3":
        return smp.DeepLabV3(decoder_channels=32, **common)
    if arch == "DeepLabV3Plus":
        return smp.DeepLabV3Plus(decoder_channels=32, **common)
    if arch == "MAnet":
        return smp.MAnet(decoder_channels=(16, 16, 8, 8, 8), decoder_pab_channels=8, **common)
    raise ValueError(arch)


class OnlyOut(nn.Module):
    """torchvision's segmentation models return a dict; export its 'out'."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def tv_model(kind, bands):
    if kind in ("fcn_resnet50", "deeplabv3_resnet50"):
        # torchvision's ResNet-50 with dilated layer3/4, as in its builders
        backbone = NarrowResNet(Bottleneck, [3, 4, 6, 3],
                                replace_stride_with_dilation=[False, True, True])
        narrow_stem(backbone)
        if bands != 3:
            backbone.conv1 = nn.Conv2d(bands, STEM, 7, 2, 3, bias=False)
        body = IntermediateLayerGetter(backbone, {"layer4": "out"})
        ch = 512 * 4 // NARROW
        if kind == "fcn_resnet50":
            return OnlyOut(FCN(body, FCNHead(ch, CLASSES), None))
        # DeepLabHead's layers with a narrow ASPP
        head = nn.Sequential(
            ASPP(ch, [12, 24, 36], out_channels=32),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, CLASSES, 1),
        )
        return OnlyOut(DeepLabV3(body, head, None))
    if kind == "lraspp_mobilenet_v3_large":
        from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3
        backbone = torchvision.models.mobilenet_v3_large(weights=None, dilated=True,
                                                         width_mult=0.25)
        if bands != 3:
            first = backbone.features[0][0]
            backbone.features[0][0] = nn.Conv2d(bands, first.out_channels, 3, 2, 1, bias=False)
        return OnlyOut(_lraspp_mobilenetv3(backbone, CLASSES))
    raise ValueError(kind)


def randomise(model, seed):
    """Seeded random weights, and batch-norm statistics that are not the
    identity, so that an evaluator that skips them fails."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def export(model, bands, path, exporter, opset, external, size, batch):
    x = torch.randn(batch, bands, size, size, generator=torch.Generator().manual_seed(7))
    if exporter == "torchscript":
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                 input_names=["input"], output_names=["output"],
                                 dynamic_shapes={"x": {0: batch}}, optimize=True)
        prog.save(path)
    m = onnx.load(path)
    if external:
        onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data", size_threshold=1024)
    return x.numpy()


def set_metadata(path, props):
    # the weights stay where they are (external data stays external)
    m = onnx.load(path, load_external_data=False)
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, path)


def histogram(path):
    m = onnx.load(path, load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    return dict(sorted(ops.items()))


def run_ort(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/onnx")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    # (name, builder, bands, exporter, opset, output kind, metadata, external)
    smp_archs = ["Unet", "UnetPlusPlus", "FPN", "Linknet", "PSPNet", "DeepLabV3",
                 "DeepLabV3Plus", "MAnet"]
    encs = ["resnet18", "resnet18", "resnet50"]  # resnet34 in the dynamo exports
    plan = []
    for i, arch in enumerate(smp_archs):
        enc = encs[i % 3]
        bands = [3, 4, 5][i % 3]
        opset = 13 + i % 8
        plan.append((f"smp_{arch.lower()}_{enc}_{bands}b_ts{opset}",
                     lambda a=arch, e=enc, b=bands: smp_model(a, e, b),
                     bands, "torchscript", opset, "logits", None, False))
    # the dynamo exporter (torch's default), opsets 18 and 20
    for i, (arch, enc) in enumerate([("Unet", "resnet34"), ("DeepLabV3Plus", "resnet18"),
                                     ("FPN", "resnet18"), ("PSPNet", "resnet34")]):
        opset = [18, 20][i % 2]
        bands = [3, 4][i % 2]
        plan.append((f"smp_{arch.lower()}_{enc}_{bands}b_dynamo{opset}",
                     lambda a=arch, e=enc, b=bands: smp_model(a, e, b),
                     bands, "dynamo", opset, "logits", None, False))
    # Deepness metadata, softmax at the end, external weights
    plan.append(("smp_unet_resnet34_3b_deepness", lambda: smp_model("Unet", "resnet34", 3,
                 activation="softmax2d"), 3, "torchscript", 17, "softmax", DEEPNESS, True))
    # one class, sigmoid: a two-class map
    plan.append(("smp_unet_resnet18_3b_sigmoid", lambda: smp_model("Unet", "resnet18", 3,
                 classes=1, activation="sigmoid"), 3, "torchscript", 14, "sigmoid", None, False))
    for i, kind in enumerate(["fcn_resnet50", "deeplabv3_resnet50",
                              "lraspp_mobilenet_v3_large"]):
        opset = [17, 13, 20][i]
        plan.append((f"tv_{kind}_ts{opset}", lambda k=kind: tv_model(k, 3), 3,
                     "torchscript", opset, "logits", None, False))
    plan.append(("tv_deeplabv3_resnet50_dynamo18", lambda: tv_model("deeplabv3_resnet50", 3),
                 3, "dynamo", 18, "logits", None, False))

    manifest = {}
    for k, (name, build, bands, exporter, opset, kind, meta, external) in enumerate(plan):
        path = os.path.join(args.out, name + ".onnx")
        model = randomise(build(), 1000 + k)
        try:
            size = PSP_SIZE if "pspnet" in name else SIZE
            batch = BATCH if name in TWO_WINDOWS else 1
            x = export(model, bands, path, exporter, opset, external, size, batch)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{name}: export failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            continue
        if meta:
            set_metadata(path, meta)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = run_ort(path, x)
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        np.save(os.path.join(args.out, name + ".input.npy"), x)
        np.save(os.path.join(args.out, name + ".output.npy"), got.astype(np.float32))
        manifest[name] = {
            "exporter": exporter, "opset": opset, "bands": bands,
            "classes": int(got.shape[1]), "window": size, "output": kind,
            "external_data": external, "metadata": meta or {},
            "torch_vs_onnxruntime": err, "ops": histogram(path),
        }
        size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
                   if f.startswith(name + "."))
        print(f"{name}: {size / 1e6:.2f} MB, torch vs onnxruntime {err:.1e}, "
              f"{len(manifest[name]['ops'])} op types")

    bad(args.out)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"total {total / 1e6:.2f} MB in {args.out}")


def bad(out):
    """Broken models for the bad-input tests (each a real export)."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, a, b):
            return self.c(a) + self.c(b)

    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(TwoInputs().eval(), (x, x), os.path.join(out, "bad_two_inputs.onnx"),
                      dynamo=False, opset_version=17, input_names=["a", "b"])

    class GridSample(nn.Module):
        """An op rstile does not run (GridSample)."""

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            grid = torch.zeros(x.shape[0], x.shape[2], x.shape[3], 2)
            return nn.functional.grid_sample(self.c(x), grid, align_corners=False)

    torch.onnx.export(GridSample().eval(), (x,), os.path.join(out, "bad_unsupported_op.onnx"),
                      dynamo=False, opset_version=17, input_names=["input"])

    # class names in the metadata that do not match the 2 output channels
    small = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    p = os.path.join(out, "bad_class_count.onnx")
    torch.onnx.export(small, (x,), p, dynamo=False, opset_version=17, input_names=["input"])
    meta = dict(DEEPNESS)
    meta["tiles_size"] = json.dumps(32)
    set_metadata(p, meta)

    # weights as external data, without the data file
    p = os.path.join(out, "bad_missing_external_data.onnx")
    torch.onnx.export(small, (x,), p, dynamo=False, opset_version=17, input_names=["input"])
    m = onnx.load(p)
    onnx.save_model(m, p, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="bad_missing_external_data.onnx.data", size_threshold=0)
    os.remove(p + ".data")


if __name__ == "__main__":
    main()
