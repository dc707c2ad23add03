"""What the runtime reports as it works: a small observer interface.

The runtime calls these hooks; whoever watches (the Prometheus metrics, a test)
overrides the ones it cares about. The base does nothing, so the runtime never
needs to know whether anyone listens.
"""

from __future__ import annotations


class Observer:
    def worker_started(self, seconds: float) -> None:
        """A worker process loaded the function in ``seconds``."""

    def worker_restarted(self) -> None:
        """A worker process died (crash, deadline, memory) and a new one is starting."""

    def inference_finished(self, seconds: float) -> None:
        """One call of the function returned (or failed) after ``seconds``."""

    def model_loaded(self, seconds: float) -> None:
        """The warm-up call (the docstring's Example) took ``seconds``."""

    def batch_sent(self, size: int, waits: list[float]) -> None:
        """A batch of ``size`` requests went to the function; ``waits``: seconds each waited to be batched."""

    def queue_waited(self, seconds: float) -> None:
        """A call waited ``seconds`` for the calls ahead of it before it ran (admission's estimate measures it)."""

    def refused(self, reason: str) -> None:
        """A request was refused before it queued (503): not_ready, queue_full, queue_wait or deadline."""

    def files_moved(self, bytes_in: int, bytes_out: int) -> None:
        """One request copied FILE data in from and out to the file box."""
