"""The gRPC server of one serving process, started and stopped with the HTTP app (its lifespan).

It shares the process's data plane, so REST and gRPC calls wait in one queue for one worker.
With several uvicorn workers each binds the port with ``SO_REUSEPORT`` and the kernel spreads
connections; with one, the option is off so a port in use is an error at start-up.

grpcio's own threads (its completion-queue poller, its event engine's I/O threads) run as
``SCHED_BATCH``: each wakes several times per call (about 18 context switches an answer at
8 streams), and a normal thread that wakes preempts the event loop's thread mid-request on a
shared core. As batch threads they run when the loop waits or at the scheduler's tick, and each
wake-up handles what has gathered (5 switches an answer; +8% answers a second at 8 streams on
one core, no clear change at 1 or 64; latency with a CPU hog on the same core unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mlcomponent.grpc.codec import SERVICE
from mlcomponent.grpc.service import Calls, Health, InferenceService
from mlcomponent.metrics import Metrics
from mlcomponent.runtime.dataplane import DataPlane

log = logging.getLogger("mlcomponent.grpc")


@contextlib.contextmanager
def threads_started_here_yield() -> Iterator[None]:
    """Threads this thread starts inside run as ``SCHED_BATCH`` (they inherit its policy, and so do the
    threads they start): their wake-ups no longer preempt the thread that started them.

    Only from the normal policy, on Linux, where allowed; otherwise nothing changes. The calling
    thread is back to its policy on leaving. Threads grpcio started before (a gRPC channel the
    process opened earlier) keep theirs.
    """
    try:
        normal = os.sched_getscheduler(0) == os.SCHED_OTHER
        if normal:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a sandbox that forbids it
        normal = False
    try:
        yield
    finally:
        if normal:
            try:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except OSError as error:  # never seen
                log.error("could not restore the event loop thread's scheduling policy (%s): it stays SCHED_BATCH, "
                          "and so will the threads and processes it starts, a restarted worker too", error)


class GrpcServer:
    def __init__(self, plane: DataPlane, metrics: Metrics, *, host: str, port: int, token: str | None,
                 max_message: int, reuse_port: bool = False, hide_errors: bool = False) -> None:
        self.plane = plane
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.options = [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", -1),
                        ("grpc.so_reuseport", int(reuse_port))]
        self.calls = Calls(metrics, token, hide_errors)
        self.health = Health(plane)
        self.server: grpc.aio.Server | None = None
        self._follow: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with threads_started_here_yield():  # grpcio starts its threads with the server
            server = grpc.aio.server(options=self.options)
        handlers = InferenceService(self.plane).handlers(self.calls)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        server.add_registered_method_handlers(SERVICE, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME], server)
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise RuntimeError(f"cannot serve gRPC on {self.address}: {error}") from None
        await server.start()
        self.server = server
        self._follow = asyncio.create_task(self.health.follow())
        log.info("gRPC (%s) on %s", SERVICE, self.address)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let the ones in flight finish (up to ``grace`` seconds), then close."""
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
