"""The service never dies on a bad request: arbitrary JSON at the infer endpoint gets 200 or a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import HTTP, Server

SCALARS = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=20)
DATATYPES = st.sampled_from(["FP32", "FP64", "INT32", "str", "BYTES", "FILE", "FP16", 7, None])
TENSOR = st.fixed_dictionaries({"name": st.text(max_size=5) | st.none(), "datatype": DATATYPES,
                                "shape": st.lists(st.integers(min_value=-2, max_value=5), max_size=3) | JSON,
                                "data": JSON}, optional={"parameters": JSON})
BODY: Any = st.one_of(JSON, st.fixed_dictionaries({"inputs": st.lists(TENSOR, max_size=3)},
                                                  optional={"parameters": JSON, "outputs": JSON, "id": JSON}))


@pytest.fixture
def echo_client(echo: Server) -> Iterator[httpx.Client]:
    """One kept-alive connection for the examples (a new one per example was half the test's time)."""
    with echo.client() as client:
        yield client


@pytest.fixture
def full_client(full: Server) -> Iterator[httpx.Client]:
    """The same for the function that declares a specification."""
    with full.client() as client:
        yield client


def _check(client: httpx.Client, body: Any) -> None:
    response = client.post("/v2/models/test-model/infer", json=body)
    assert response.status_code in (200, 400, 404), f"{response.status_code} for {body!r}: {response.text}"
    assert "error" in response.json() or response.status_code == 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_arbitrary_bodies_never_make_a_5xx(echo_client: httpx.Client, body: Any) -> None:
    _check(echo_client, body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_arbitrary_bodies_against_a_declared_spec(full_client: httpx.Client, body: Any) -> None:
    _check(full_client, body)


def test_still_alive_after_the_fuzzing(echo: Server) -> None:
    assert HTTP.get(echo.url + "/v2/health/ready").status_code == 200
