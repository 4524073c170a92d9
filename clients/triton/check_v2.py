"""Checks the server with Triton's own Python clients, unmodified: tritonclient.http and
tritonclient.grpc against a running server, on the example model (JSON and binary tensor
data) and, when the repository serves it, on ResNet-18, against the golden files.

Usage: python check_v2.py HTTP_HOST:PORT GRPC_HOST:PORT MODELS_DIR
Prints one line per check and exits non-zero at the first that fails.
"""

import os
import sys
import time
import tomllib

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

EXAMPLE = "example_model"
RESNET = "resnet18"
# The backends agree with eager PyTorch to this on ResNet-18 (the conformance suite's bound).
RESNET_TOLERANCE = 1e-4


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def example_golden(models_dir):
    with open(os.path.join(models_dir, "example", "golden.toml"), "rb") as file:
        cases = tomllib.load(file)["cases"]
    inputs = np.array([c["input"] for c in cases], dtype=np.float32)
    outputs = np.array([c["output"] for c in cases], dtype=np.float32)
    return inputs, outputs


def resnet_golden(models_dir):
    path = os.path.join(models_dir, RESNET, "golden.safetensors")
    if not os.path.exists(path):
        return None
    from safetensors.numpy import load_file

    golden = load_file(path)
    return golden["inputs"][:2], golden["logits"][:2]


def check_server(name, client, module, golden, resnet):
    check(client.is_server_live(), f"{name}: server live")
    check(client.is_server_ready(), f"{name}: server ready")
    check(client.is_model_ready(EXAMPLE), f"{name}: {EXAMPLE} ready")
    check(not client.is_model_ready(EXAMPLE, model_version="v9"), f"{name}: no version v9")
    metadata = client.get_server_metadata()
    if name == "grpc":
        metadata = {"name": metadata.name, "extensions": list(metadata.extensions)}
    check(metadata["name"] == "inference-server", f"{name}: server metadata {metadata}")
    model = client.get_model_metadata(EXAMPLE)
    if name == "grpc":
        model = {
            "versions": list(model.versions),
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                       for t in model.inputs],
        }
    check(model["versions"] == ["v1.0"], f"{name}: model versions {model['versions']}")
    check(model["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1]},
          f"{name}: model input {model['inputs'][0]}")

    inputs, outputs = golden
    encodings = [True, False] if name == "http" else [True]
    for binary in encodings:
        tensor = module.InferInput("input", list(inputs.shape), "FP32")
        if name == "http":
            tensor.set_data_from_numpy(inputs, binary_data=binary)
            requested = [module.InferRequestedOutput("output", binary_data=binary)]
        else:
            tensor.set_data_from_numpy(inputs)
            requested = [module.InferRequestedOutput("output")]
        result = client.infer(EXAMPLE, [tensor], outputs=requested, request_id="check-1")
        got = result.as_numpy("output")
        how = "binary" if binary else "JSON"
        check(got is not None and got.shape == outputs.shape,
              f"{name}: {how} infer shape {None if got is None else got.shape}")
        check(np.allclose(got, outputs, atol=1e-5),
              f"{name}: {how} infer matches golden.toml "
              f"(max abs diff {np.abs(got - outputs).max():.3g})")
        response = result.get_response()
        request_id = response.id if name == "grpc" else response.get("id")
        check(request_id == "check-1", f"{name}: request id echoed ({request_id!r})")

    try:
        client.infer("no_such_model", [tensor])
        check(False, f"{name}: unknown model refused")
    except Exception as err:  # noqa: BLE001 - the clients raise their own exception types
        check("no_such_model" in str(err), f"{name}: unknown model refused ({err})")

    if resnet is None:
        print(f"skip: {name}: {RESNET} is not in the repository")
        return
    images, logits = resnet
    check(client.is_model_ready(RESNET), f"{name}: {RESNET} ready")
    for row in range(images.shape[0]):
        image = images[row:row + 1]
        tensor = module.InferInput("input", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        got = client.infer(RESNET, [tensor]).as_numpy("logits")
        diff = np.abs(got - logits[row:row + 1]).max()
        check(got.shape == (1, 1000) and diff <= RESNET_TOLERANCE,
              f"{name}: {RESNET} 1x3x224x224 infer matches golden.safetensors row {row} "
              f"(max abs diff {diff:.3g})")


def wait_until_ready(client, seconds=120):
    """The server listens before its models load: waits for all of them to be ready."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except Exception:  # noqa: BLE001 - not accepting connections yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"FAIL: the server was not ready within {seconds} s")


def main():
    http_url, grpc_url, models_dir = sys.argv[1:4]
    golden = example_golden(models_dir)
    resnet = resnet_golden(models_dir)
    wait_until_ready(httpclient.InferenceServerClient(http_url))
    check_server("http", httpclient.InferenceServerClient(http_url), httpclient, golden, resnet)
    check_server("grpc", grpcclient.InferenceServerClient(grpc_url), grpcclient, golden, resnet)
    print("tritonclient: every check passed")


if __name__ == "__main__":
    main()
