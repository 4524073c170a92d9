"""TorchServe handler for models/example/model.pt, used by `cargo xtask bench peers`.

It reads the body that our server's `POST /predict` reads, `{"inputs": 2}`, one number per
request (TorchServe hands the handler up to `batchSize` requests at once), and answers with
the three outputs, `{"result": [...], "prediction": [...]}`, as our server does.
"""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


def _body(row):
    body = row.get("data") or row.get("body")
    # TorchServe decodes application/json bodies itself; raw bytes are decoded here.
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    return body


def _number(value):
    return float(value[0]) if isinstance(value, list) else float(value)


class ExampleHandler(BaseHandler):
    """BaseHandler loads the TorchScript file and runs it under no_grad."""

    def preprocess(self, data):
        rows = [_number(_body(row)["inputs"]) for row in data]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 1)

    def postprocess(self, data):
        return [{"result": row, "prediction": row} for row in data.tolist()]
