"""MLServer custom runtime: double a tensor."""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class Double(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = payload.inputs[0]
        data = [v * 2 for v in x.data.root]
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="y", shape=x.shape, datatype="FP32", data=data)])
