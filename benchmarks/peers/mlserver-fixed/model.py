"""MLServer custom runtime: the fixed-cost model (5 ms per call, whatever the batch size)."""

import time

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

COST = 0.005


class Fixed(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0])
        time.sleep(COST)  # blocks like a kernel launch would (our worker process blocks the same way)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("y", rows.sum(axis=1).astype("float32"))])
