"""KServe Python ModelServer, its fastest path for large tensors: numpy in and out, binary when asked."""

import sys

from kserve import InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.infer_type import InferOutput


class Double(Model):
    def __init__(self) -> None:
        super().__init__("double")
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        binary = any((o.parameters or {}).get("binary_data") for o in payload.request_outputs or [])
        output = InferOutput(name="y", shape=list(x.shape), datatype="FP32")
        output.set_data_from_numpy(x * 2, binary_data=binary)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or "0",
                             use_binary_outputs=binary)


if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[1]), workers=1, enable_grpc=False, enable_docs_url=False,
                enable_latency_logging=False, access_log_format=None).start([Double()])
