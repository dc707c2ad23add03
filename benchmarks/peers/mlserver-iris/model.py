"""MLServer custom runtime: the iris example's scikit-learn model, same outputs as ours."""

import os

import joblib
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

SPECIES = ["setosa", "versicolor", "virginica"]


class Iris(MLModel):
    async def load(self) -> bool:
        self.model = joblib.load(os.environ["IRIS_MODEL"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32).reshape(-1, 4)
        best = self.model.predict_proba(rows).argmax(axis=1)
        return InferenceResponse(model_name=self.name, outputs=[
            StringCodec.encode_output("label", [SPECIES[i] for i in best]),
            NumpyCodec.encode_output("class_index", best.astype(np.int32))])
