"""The ceiling: a bare ASGI app on uvicorn that parses the V2 JSON and answers it doubled."""

import orjson


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"].endswith("/infer"):
        request = orjson.loads(body)
        x = request["inputs"][0]
        answer = {"model_name": "double", "outputs": [
            {"name": "y", "datatype": "FP32", "shape": x["shape"], "data": [v * 2 for v in x["data"]]}]}
    else:
        answer = {"ready": True}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": orjson.dumps(answer)})
