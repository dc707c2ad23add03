"""gRPC transport over the data plane: the protocol's ``inference.GRPCInferenceService``.

``codec.py`` turns the protocol's messages into the V2 body and back (both sides), ``service.py``
holds the RPCs and health checking, ``server.py`` runs them beside the HTTP app, and
``channel.py`` is the client's end.
"""
