"""KServe Python ModelServer: double a tensor over the V2 protocol."""

import sys

from kserve import InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.infer_type import InferOutput


class Double(Model):
    def __init__(self) -> None:
        super().__init__("double")
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0]
        data = [v * 2 for v in x.data]
        output = InferOutput(name="y", shape=x.shape, datatype="FP32", data=data)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or "0")


if __name__ == "__main__":  # HTTP_PORT [GRPC_PORT]: gRPC only when its port is given
    grpc_port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    ModelServer(http_port=int(sys.argv[1]), grpc_port=grpc_port or 8081, workers=1, enable_grpc=grpc_port is not None,
                enable_docs_url=False, enable_latency_logging=False, access_log_format=None).start([Double()])
