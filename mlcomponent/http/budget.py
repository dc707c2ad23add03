"""The HTTP process's memory budget: request bodies being read and decoded, answers being written.

Without it, three 63 MB JSON bodies at once took one HTTP process to 3.2 GiB. Each
infer request holds a share (``Hold``) while it reads, decodes and answers: a JSON
body counts ``JSON_EXPANSION`` times its size (what ``orjson`` and the flat lists of
the decoded tensors take), a binary one ``BINARY_EXPANSION`` times, an answer its own
size. A request that would take the total past the limit while others hold some gets
``503`` with ``Retry-After`` before it reads more (a request alone is always let
through: ``--max-json-body`` bounds it). Small requests (at most ``small`` bytes in
all) are never refused, so a client holding the budget cannot lock out health probes
and ordinary calls. Answers are counted, not refused: the work is done by then, and
``--write-timeout`` frees an answer its client does not read.
"""

from __future__ import annotations

from mlcomponent.errors import NotReady

MB = 1024 * 1024
JSON_EXPANSION = 16  # measured: a 63 MB JSON body of numbers peaked near 1 GiB in the HTTP process
BINARY_EXPANSION = 3  # the raw body, its packed tensors, and the copy sent to the worker
MIN_BUDGET = 64 * MB
NO_LIMIT_BUDGET = 1024 * MB


def default_budget(memory_limit: int | None) -> int:
    """Half of ``resourceLimits.memory`` (the worker's cap; at least 64 MiB), or 1 GiB without one."""
    if memory_limit is None:
        return NO_LIMIT_BUDGET
    return max(MIN_BUDGET, memory_limit // 2)


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.small = max(MB, limit // 64)
        self.held = 0  # bytes held by all requests now
        self.refused = 0

    def hold(self) -> Hold:
        return Hold(self)


class Hold:
    """One request's share of the budget; ``release`` it when the answer is written (or the request fails)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.amount = 0

    def take(self, amount: int) -> None:
        """Hold ``amount`` more bytes, or raise ``NotReady`` (503) when that would pass the budget."""
        budget = self.budget
        total = self.amount + amount
        others = budget.held - self.amount
        if total > budget.small and others > 0 and budget.held + amount > budget.limit:
            budget.refused += 1
            raise NotReady(f"the service is holding too many large requests and answers right now (memory budget "
                           f"{budget.limit // MB} MiB, --memory-budget-mb); retry shortly", retry_after=1)
        self.count(amount)

    def count(self, amount: int) -> None:
        """Hold ``amount`` more bytes, whatever the budget (an answer already computed)."""
        self.amount += amount
        self.budget.held += amount

    def release(self) -> None:
        self.budget.held -= self.amount
        self.amount = 0
