"""What both transports share, below them: auth and the open-endpoint policy, the metadata
documents, an error's status and message, and the request wrapper (id, in-flight, timing).

Framework-free: no Starlette, uvicorn or grpcio here, so ``http/`` and ``grpc/`` stay siblings
that never import each other.
"""
