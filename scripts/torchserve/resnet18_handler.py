"""TorchServe handler for models/resnet18/model.pt, used by `cargo xtask bench peers`.

It reads the body that our server's `POST /models/resnet18/predict` reads,
`{"inputs": "<base64 picture>"}`, preprocesses like `[preprocess]` in model.toml (resize
to 256, center crop 224, ImageNet mean and std) and answers like our server: the 1000
logits and the top 5 classes with their labels (labels.txt, packed into the archive).
"""

import base64
import io
import json
import os

import torch
from PIL import Image
from torchvision import transforms
from ts.torch_handler.base_handler import BaseHandler

TOP_K = 5


def _body(row):
    body = row.get("data") or row.get("body")
    # TorchServe decodes application/json bodies itself; raw bytes are decoded here.
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    return body


class Resnet18Handler(BaseHandler):
    """BaseHandler loads the TorchScript file and runs it under no_grad."""

    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )

    def initialize(self, context):
        super().initialize(context)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "labels.txt"), encoding="utf-8") as f:
            self.labels = [line.strip() for line in f]

    def preprocess(self, data):
        pictures = []
        for row in data:
            picture = base64.b64decode(_body(row)["inputs"])
            image = Image.open(io.BytesIO(picture)).convert("RGB")
            pictures.append(self.transform(image))
        return torch.stack(pictures)

    def postprocess(self, data):
        scores, indices = torch.softmax(data, dim=1).topk(TOP_K, dim=1)
        answers = []
        for logits, row_scores, row_indices in zip(
            data.tolist(), scores.tolist(), indices.tolist()
        ):
            classes = [
                {"label": self.labels[index], "index": index, "score": score}
                for index, score in zip(row_indices, row_scores)
            ]
            answers.append({"result": {"logits": logits, "classes": classes}})
        return answers
