"""The gRPC ceiling (and the load generator's check): a bare grpcio asyncio servicer that parses the
ModelInferRequest, doubles the tensor and answers, with nothing else (no validation, no worker hop)."""

import sys

import grpc
import uvloop
from open_inference.grpc.protocol import ModelInferRequest, ModelInferResponse


async def infer(request: ModelInferRequest, context: grpc.aio.ServicerContext) -> ModelInferResponse:
    x = request.inputs[0]
    answer = ModelInferResponse(model_name="double")
    answer.outputs.add(name="y", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(
        v * 2 for v in x.contents.fp32_contents)
    return answer


async def main(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(infer, ModelInferRequest.FromString,
                                                  ModelInferResponse.SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
