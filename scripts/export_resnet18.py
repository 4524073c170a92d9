"""Exports torchvision's ResNet-18 with seeded random weights, an image corpus and goldens.

Run with ``cargo xtask export-models --resnet18``, or with the project venv (which then needs
onnx, safetensors, torchvision and pillow):
``~/.cache/inference-server/venv/bin/python scripts/export_resnet18.py [OUT_DIR]``.
OUT_DIR defaults to ``models/resnet18`` in the workspace. Nothing is downloaded: the weights
come from ``torch.manual_seed(0)`` (batch norms calibrated on seeded noise, see
``build_model``) and the ImageNet labels are metadata inside torchvision.

Writes, into OUT_DIR:

- ``model.safetensors`` (torchvision parameter names, float32, no ``num_batches_tracked``),
  ``model.onnx`` (opset 17, dynamic batch), ``model.pt`` (traced TorchScript),
  ``model.toml`` (the server's manifest) and ``labels.txt`` (1000 ImageNet class names);
- ``images/``: a small deterministic image corpus drawn with numpy and Pillow;
- ``golden.safetensors`` and ``golden.toml``: eager PyTorch outputs for 32 random inputs,
  and torchvision's preprocessing and the model's outputs for every corpus image.

Before finishing, checks that ONNX Runtime and the reloaded TorchScript module reproduce the
eager logits within ``EXPORT_TOLERANCE``, and exits non-zero otherwise.
"""

import json
import os
import sys
import time
import warnings

import numpy as np
import onnxruntime
import torch
import torchvision
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torchvision import transforms

# Max abs difference allowed between eager PyTorch and the exported ONNX / TorchScript; the
# backends' conformance suite checks the same tolerance against golden.safetensors.
EXPORT_TOLERANCE = 1e-4
GOLDEN_BATCH = 32
TOP_K = 5
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
RESIZE = 256
CROP = 224
MAX_IMAGE_BYTES = 200 * 1024

MANIFEST = """\
name = "resnet18"
version = "1"
description = "torchvision ResNet-18 with seeded random weights (torch.manual_seed(0)); exported by scripts/export_resnet18.py."

[[inputs]]
name = "input"
dtype = "f32"
shape = [3, 224, 224]

[[outputs]]
name = "logits"
dtype = "f32"
shape = [1000]

# On CPU every backend's rows/s stops growing at 8 rows a pass (`cargo xtask bench
# engines`), while a pass of 32 takes four times as long and up to 2.8 times the memory
# (candle: 1,142 against 411 MiB at peak). A GPU gains from larger batches: raise it there.
[batching]
max_batch_size = 8

[files]
candle = "model.safetensors"
ort = "model.onnx"
tch = "model.pt"

[candle]
architecture = "resnet"
depth = 18

[preprocess]
kind = "image"
resize = 256
crop = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
channels = "rgb"
layout = "nchw"

[postprocess]
kind = "classification"
top_k = 5
labels = "labels.txt"
"""


def default_out_dir():
    workspace = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(workspace, "models", "resnet18")


def build_model():
    """ResNet-18 with torchvision's default init, then non-trivial batch norms.

    The default init leaves every batch norm at weight 1, bias 0, mean 0, variance 1, which
    would let a backend that mishandles them pass, and gives nearly the same top-1 class for
    every input. So, still from the seed, the affine parameters are drawn near (1, 0) and the
    running statistics are set to the batch statistics of one seeded calibration batch (half
    white noise, half smooth noise) in training mode.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).to(torch.float32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.8, 1.2)
            norm.bias.normal_(0.0, 0.1)
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: one batch sets the statistics
        white = torch.randn(8, 3, CROP, CROP)
        smooth = torch.nn.functional.interpolate(
            torch.randn(8, 3, 14, 14), size=CROP, mode="bilinear", align_corners=False
        )
        model.train()
        model(torch.cat([white, smooth]))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()
    return model


def state_dict_for_export(model):
    state = {
        name: tensor.detach().to(torch.float32).contiguous()
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    expected = {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "fc.bias"}
    missing = expected - set(state)
    assert not missing, f"unexpected parameter names, missing {sorted(missing)}"
    return state


# ---------------------------------------------------------------------------------------
# Image corpus: deterministic (fixed numpy seeds, pinned Pillow), small, no downloads.


def grid(width, height):
    """Pixel-centre coordinates in [0, 1], as float64 arrays of shape (height, width)."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    return np.meshgrid(x, y)


def to_u8(array):
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def gradient_image():
    x, y = grid(320, 240)
    r = 255 * x
    g = 255 * y
    b = 127.5 * (1 + np.sin(2 * np.pi * (1.5 * x + y)))
    return Image.fromarray(to_u8(np.stack([r, g, b], axis=-1)), "RGB")


def photo_image():
    rng = np.random.default_rng(2)
    width, height = 500, 375
    x, y = grid(width, height)
    sky = np.stack([90 + 80 * y, 140 + 60 * y, 230 - 40 * y], axis=-1)
    ground = np.stack([70 + 50 * x, 120 - 40 * y, 40 + 20 * x], axis=-1)
    background = np.where((y > 0.6 + 0.05 * np.sin(9 * x))[..., None], ground, sky)
    image = Image.fromarray(to_u8(background), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        w, h = rng.integers(20, 160), rng.integers(20, 120)
        box = [int(x0), int(y0), int(min(x0 + w, width - 1)), int(min(y0 + h, height - 1))]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse(box, fill=color)
        elif shape == 1:
            draw.rectangle(box, fill=color, outline=(20, 20, 20), width=2)
        else:
            apex = ((box[0] + box[2]) // 2, box[1])
            draw.polygon([(box[0], box[3]), apex, (box[2], box[3])], fill=color)
    # Fine texture: mild per-pixel noise plus a coarser blotch pattern.
    pixels = np.asarray(image, dtype=np.float64)
    noise = rng.normal(0, 6, size=pixels.shape)
    coarse = rng.normal(0, 10, size=(height // 5 + 1, width // 5 + 1, 1))
    blotches = np.kron(coarse, np.ones((5, 5, 1)))
    pixels = pixels + noise + blotches[:height, :width]
    return Image.fromarray(to_u8(pixels), "RGB")


def gray_image():
    x, y = grid(256, 256)
    radius = np.hypot(x - 0.4, y - 0.55)
    value = 60 + 120 * x + 60 * np.sin(40 * radius) * np.exp(-3 * radius)
    return Image.fromarray(to_u8(value), "L")


def rgba_image():
    x, y = grid(300, 200)
    rgb = np.stack([255 * (1 - x), 200 * y + 30, 128 + 100 * np.cos(6 * x + 4 * y)], axis=-1)
    # Alpha ramps left to right and is 0 inside a disc; the colour under it is still there,
    # and convert("RGB") keeps it (alpha is dropped, not composited onto a background).
    alpha = 255 * x
    alpha = np.where(np.hypot(x - 0.7, y - 0.5) < 0.2, 0, alpha)
    return Image.fromarray(to_u8(np.concatenate([rgb, alpha[..., None]], axis=-1)), "RGBA")


def odd_image():
    rng = np.random.default_rng(3)
    width, height = 97, 301
    x, y = grid(width, height)
    checker = ((np.floor(x * 6) + np.floor(y * 19)) % 2)[..., None]
    colors = checker * np.array([220, 180, 40]) + (1 - checker) * np.array([30, 60, 160])
    noise = rng.normal(0, 8, size=(height, width, 3))
    pixels = colors + 40 * np.stack([x, y, x * y], axis=-1) + noise
    return Image.fromarray(to_u8(pixels), "RGB")


def small_image():
    rng = np.random.default_rng(4)
    coarse = rng.integers(0, 256, size=(6, 8, 3)).astype(np.float64)
    pixels = np.kron(coarse, np.ones((8, 8, 1)))
    x, y = grid(64, 48)
    pixels = 0.7 * pixels + 0.3 * 255 * np.stack([x, y, 1 - x], axis=-1)
    return Image.fromarray(to_u8(pixels), "RGB")


def palette_image():
    x, y = grid(160, 120)
    indices = (np.floor(x * 4) + 4 * np.floor(y * 4)).astype(np.uint8)
    rings = (np.hypot(x - 0.5, y - 0.5) * 20).astype(np.uint8) % 2
    indices = np.where(rings == 1, 15 - indices, indices).astype(np.uint8)
    image = Image.fromarray(indices, "L").convert("P")
    palette = []
    for i in range(16):
        palette += [(i * 53) % 256, (i * 97 + 40) % 256, (255 - i * 16) % 256]
    image.putpalette(palette)
    return image


# (file name, builder, save options). The order is the order of the golden tensors.
CORPUS = [
    ("gradient.png", gradient_image, {}),
    # 4:4:4 (no chroma subsampling) keeps decoders from differing in chroma upsampling.
    ("photo.jpg", photo_image, {"quality": 90, "subsampling": 0}),
    ("gray.png", gray_image, {}),
    ("rgba.png", rgba_image, {}),
    ("odd.png", odd_image, {}),
    ("small.png", small_image, {}),
    ("palette.png", palette_image, {}),
]


def write_corpus(images_dir):
    os.makedirs(images_dir, exist_ok=True)
    for name, build, options in CORPUS:
        path = os.path.join(images_dir, name)
        build().save(path, optimize=False, **options)
        size = os.path.getsize(path)
        if size > MAX_IMAGE_BYTES:
            sys.exit(f"{name} is {size} bytes, over the {MAX_IMAGE_BYTES}-byte limit")


def resized_size(width, height):
    """What torchvision's Resize(RESIZE) makes of a (width, height) image."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = RESIZE, int(RESIZE * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_offset(width, height):
    """CenterCrop(CROP)'s (left, top) offset; Python's round() rounds halves to even."""
    return int(round((width - CROP) / 2.0)), int(round((height - CROP) / 2.0))


# ---------------------------------------------------------------------------------------
# Goldens.


def check_recipe(path, expected):
    """Checks that the recipe golden.toml describes reproduces torchvision's tensor exactly."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    new_w, new_h = resized_size(*rgb.size)
    left, top = crop_offset(new_w, new_h)
    pixels = rgb.resize((new_w, new_h), Image.BILINEAR).crop((left, top, left + CROP, top + CROP))
    pixels = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).permute(2, 0, 1) / 255
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    diff = float(((pixels - mean) / std - expected).abs().max())
    if diff > 1e-6:
        sys.exit(f"{os.path.basename(path)}: the documented recipe is off by {diff}")


def toml_string(value):
    # A JSON string of printable ASCII is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def write_golden_toml(path, notes, names, top5_labels):
    lines = [f"# {line}" if line else "#" for line in notes]
    lines.append("")
    lines.append("images = [" + ", ".join(toml_string(n) for n in names) + "]")
    lines.append("top5_labels = [")
    for labels in top5_labels:
        lines.append("    [" + ", ".join(toml_string(label) for label in labels) + "],")
    lines.append("]")
    lines.append("")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines))


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def main():
    started = time.monotonic()
    out_dir = sys.argv[1] if len(sys.argv) > 1 else default_out_dir()
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    model = build_model()
    state = state_dict_for_export(model)
    safetensors_path = os.path.join(out_dir, "model.safetensors")
    save_file(state, safetensors_path)
    # save_file writes through a private temp file; make it readable like the others.
    os.chmod(safetensors_path, 0o644)

    torch.manual_seed(1)
    inputs = torch.randn(GOLDEN_BATCH, 3, CROP, CROP, dtype=torch.float32)
    with torch.no_grad():
        logits = model(inputs)

    onnx_path = os.path.join(out_dir, "model.onnx")
    # dynamo=False is deliberate (the TorchScript-based exporter); silence its notice.
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
    torch.onnx.export(
        model,
        (inputs[:1],),
        onnx_path,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )

    pt_path = os.path.join(out_dir, "model.pt")
    with torch.no_grad():
        traced = torch.jit.trace(model, (inputs[:1],))
    traced.save(pt_path)

    with open(os.path.join(out_dir, "model.toml"), "w", encoding="utf-8", newline="\n") as f:
        f.write(MANIFEST)
    labels = list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(labels) == 1000, len(labels)
    with open(os.path.join(out_dir, "labels.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{label}\n" for label in labels))

    images_dir = os.path.join(out_dir, "images")
    write_corpus(images_dir)
    preprocess = transforms.Compose(
        [
            transforms.Resize(RESIZE),
            transforms.CenterCrop(CROP),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    names, modes, preprocessed = [], [], []
    for name, _, _ in CORPUS:
        with Image.open(os.path.join(images_dir, name)) as image:
            modes.append(image.mode)
            preprocessed.append(preprocess(image.convert("RGB")))
        names.append(name)
    preprocessed = torch.stack(preprocessed).contiguous()
    with torch.no_grad():
        image_logits = model(preprocessed)
    image_top5 = torch.topk(torch.softmax(image_logits, dim=1), TOP_K, dim=1).indices

    save_file(
        {
            "inputs": inputs.contiguous(),
            "logits": logits.contiguous(),
            "preprocessed": preprocessed,
            "image_logits": image_logits.contiguous(),
            "image_top5": image_top5.to(torch.int64).contiguous(),
        },
        os.path.join(out_dir, "golden.safetensors"),
    )
    os.chmod(os.path.join(out_dir, "golden.safetensors"), 0o644)

    # The exported files must compute what eager PyTorch computes, for the whole batch.
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["logits"], {"input": inputs.numpy()})
    loaded = torch.jit.load(pt_path)
    with torch.no_grad():
        traced_out = loaded(inputs).numpy()
    diffs = {}
    for name, got in [("onnxruntime", onnx_out), ("torchscript", traced_out)]:
        diff = max_abs_diff(got, logits.numpy())
        diffs[name] = diff
        if got.shape != tuple(logits.shape) or diff > EXPORT_TOLERANCE:
            sys.exit(f"{name} disagrees with eager PyTorch: shape {got.shape}, max abs diff {diff}")
        print(f"{name} matches eager PyTorch on {GOLDEN_BATCH} inputs (max abs diff {diff:.3g})")

    top5_labels = [[labels[i] for i in row] for row in image_top5.tolist()]
    step = 1 / (255 * min(STD))
    notes = [
        "Generated by scripts/export_resnet18.py; the tensors are in golden.safetensors (float32",
        "unless noted), the images in images/; weights from torch.manual_seed(0), batch norms",
        "calibrated on seeded noise (see build_model in the script).",
        "",
        f"inputs [{GOLDEN_BATCH},3,{CROP},{CROP}]: torch.manual_seed(1); torch.randn.",
        f"logits [{GOLDEN_BATCH},1000]: eager PyTorch under no_grad, 1 thread. Every backend must",
        "match logits within 1e-4 max abs diff at batch 1, 8 and 32 (rows 0.., cycling through",
        "the 32 inputs).",
        f"Measured at export: onnxruntime {diffs['onnxruntime']:.3g},"
        f" torchscript {diffs['torchscript']:.3g}; max |logit| {float(logits.abs().max()):.3g}.",
        "",
        "preprocessed [N,3,224,224]: torchvision Compose([Resize(256), CenterCrop(224),",
        "ToTensor(), Normalize(mean, std)]) of Image.open(f).convert(\"RGB\"), in the order of",
        "`images`.",
        "- convert(\"RGB\"): L copies gray to R, G and B; P looks colours up in the palette; RGBA",
        "  drops alpha, keeping the stored colour even where alpha is 0 (no compositing).",
        "- Resize(256): the shorter side becomes 256, the longer int(256 * long / short)",
        "  (truncated), with PIL's bilinear filter, antialiased (its support widens by the",
        "  downscale factor), computed in fixed point and rounded to uint8 per channel.",
        "- CenterCrop(224): offset int(round((side - 224) / 2)), Python rounding (half to even).",
        "- ToTensor divides by 255, so before Normalize every value is a multiple of 1/255: a",
        f"  one-step uint8 difference is at most 1/(255*std) = {step:.4f} after Normalize.",
        "image_logits [N,1000]: the model on `preprocessed` (a backend fed `preprocessed` matches",
        "within 1e-4). image_top5 [N,5] int64: top-5 class indices of softmax(image_logits),",
        "descending; top5_labels are their labels.txt names. A server that decodes and resizes",
        "itself may be off by a uint8 step in some pixels (JPEG IDCT, resize rounding), so",
        "compare its preprocessed tensor with a tolerance of a few steps, not 1e-4.",
        "",
        "Per image: file, mode as stored, size (w x h) -> resized (w x h) -> crop offset",
        "(left, top), top-1 label.",
    ]
    for name, mode, label_row in zip(names, modes, top5_labels):
        with Image.open(os.path.join(images_dir, name)) as image:
            width, height = image.size
        new_w, new_h = resized_size(width, height)
        left, top = crop_offset(new_w, new_h)
        check_recipe(os.path.join(images_dir, name), preprocessed[names.index(name)])
        notes.append(
            f"  {name}: {mode}, {width}x{height} -> {new_w}x{new_h} -> ({left}, {top}),"
            f" {label_row[0]!r}"
        )
    write_golden_toml(os.path.join(out_dir, "golden.toml"), notes, names, top5_labels)

    elapsed = time.monotonic() - started
    print(
        f"wrote resnet18 ({len(state)} tensors, {sum(t.numel() for t in state.values())} parameters"
        f" and buffers), {len(names)} images and goldens to {out_dir} in {elapsed:.1f} s"
    )
    top1 = ", ".join(f"{n}: {row[0]}" for n, row in zip(names, top5_labels))
    print(f"max |logit| {float(logits.abs().max()):.3g}; image top-1: {top1}")


if __name__ == "__main__":
    main()
