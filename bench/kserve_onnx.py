"""The peer for bench/inference.sh: KServe's Python model server serving an ONNX file through
onnxruntime, with a small custom kserve.Model, as a user would otherwise deploy it.

usage: kserve_onnx.py --model_name NAME --model_path FILE --http_port PORT
"""
import argparse
import uuid

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        outputs = []
        for name, r in zip(self.output_names, results):
            out = InferOutput(name=name, shape=list(r.shape), datatype="FP32")
            out.set_data_from_numpy(r.astype(np.float32), binary_data=False)
            outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start(
        [OnnxModel(args.model_name, args.model_path)]
    )
