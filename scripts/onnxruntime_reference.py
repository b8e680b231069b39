"""Runs an ONNX model with onnxruntime on given inputs: the reference revisor's outputs are compared with.

usage: onnxruntime_reference.py MODEL INPUTS_JSON OUTPUTS_JSON
INPUTS_JSON:  {"inputs": {"<name>": {"shape": [...], "dtype": "int32", "data": [...]}}}
OUTPUTS_JSON: {"outputs": {"<name>": {"shape": [...], "data": [...]}}}
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main(model, inputs_path, outputs_path):
    with open(inputs_path) as f:
        spec = json.load(f)["inputs"]
    feeds = {name: np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"]) for name, t in spec.items()}
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    out = {n: {"shape": list(r.shape), "data": r.astype(np.float64).ravel().tolist()} for n, r in zip(names, results)}
    with open(outputs_path, "w") as f:
        json.dump({"outputs": out}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
