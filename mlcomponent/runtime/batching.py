"""Adaptive batching: concurrent requests merged into one call of the function along dimension 0.

A function opts in with a ``Batching:`` section in its docstring (``max_batch_size`` rows,
``max_batch_delay``); ``serve --max-batch-size/--max-batch-delay-ms`` override it. Requests
merge when they agree on everything but their number of rows: input names, datatypes,
non-batch dimensions (and FILE content types), parameters and requested outputs. The
merged call gets the rows of every member one after the other (a FILE input becomes the
list of the members' paths); each output's first dimension must be the total of rows, and
is split back by each member's row count.

When a batch goes (one call of the function in flight at a time, so a batch keeps
growing while the function is busy):

- it is full (``max_batch_size`` rows), or
- the function is idle and no other request is on its way (none is being decoded or
  having its files staged): at low load a request never waits for company, or
- the function is idle and its first member has waited ``max_batch_delay``.

Rules: each member keeps its own deadline (one that passes before the call starts leaves
the batch and is answered 504 without running; one that passes during the call is
answered 504 and its rows are dropped; the call is stopped only once every member's
deadline has passed). When a merged call fails (the function raises, returns a first
dimension that does not match, or its worker dies), each half of its members is run
again, and so on down to single requests: only the members that cause the failure fail,
each with its own error, never another request's message. The cost: for one poisoned
request in a batch of n, about 2·log2(n) extra calls (a worker-killing one restarts the
worker about log2(n) times); innocent requests are never re-run once their call has
succeeded. A request that cannot merge (inputs without a common first dimension, a FILE tensor of
more than one row) runs on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from mlcomponent.errors import BadFunctionOutput, EntryPointError, MLComponentError, Timeout
from mlcomponent.protocol.packed import Packed
from mlcomponent.protocol.plain import as_plain
from mlcomponent.protocol.response import output_items
from mlcomponent.protocol.tensors import canonical_datatype, count_problem, flatten_with_kinds, shape_problem
from mlcomponent.protocol.types import InferenceRequest, InputTensor, StagedFile
from mlcomponent.runtime.admission import ServiceTime
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.runner import Runner
from mlcomponent.spec.model import BatchingSpec, FunctionSpec

log = logging.getLogger("mlcomponent.batching")
Staged = dict[str, StagedFile]


@dataclass(eq=False)
class Member:
    """One request waiting for, or riding in, a batch."""

    request: InferenceRequest
    staged_inputs: Staged
    staged_outputs: Staged
    deadline: float | None  # loop time
    rows: int | None  # None: cannot merge, runs on its own
    key: Any
    joined: float
    future: asyncio.Future[Any]
    batch: Batch | None = None
    abandoned: bool = False  # answered 504 already; the call's result for it is dropped


@dataclass(eq=False)
class Batch:
    key: Any
    members: list[Member] = field(default_factory=list)
    rows: int = 0
    started: float = 0.0
    dispatched: bool = False


def _rows_and_key(request: InferenceRequest, staged_inputs: Staged) -> tuple[int | None, Any]:
    """The request's number of rows and what it must share with others to merge (None, unique: it can't)."""
    rows: int | None = None
    has_files = False
    inputs = []
    for tensor in request.inputs:
        if not tensor.shape:
            return None, object()
        if rows is None:
            rows = tensor.shape[0]
        elif tensor.shape[0] != rows:
            return None, object()
        content_type = tensor.content_type
        if tensor.datatype == "FILE":
            has_files = True
            if tensor.shape != [1]:
                return None, object()
            staged = staged_inputs.get(tensor.name)
            content_type = staged.content_type if staged else content_type
        inputs.append((tensor.name, tensor.datatype, tuple(tensor.shape[1:]), content_type))
    if rows is None or rows == 0:
        return None, object()
    outputs = []
    for output in request.outputs:
        has_files = has_files or output.datatype == "FILE"
        outputs.append((output.name, output.datatype, output.content_type,
                        None if output.shape is None else tuple(output.shape)))
    if has_files and rows != 1:
        return None, object()
    try:
        parameters = tuple(request.parameters.items())
        key = (tuple(sorted(inputs)), parameters, tuple(outputs))
        hash(key)
    except TypeError:
        return None, object()
    return rows, key


def _concat(parts: list[Any]) -> Any:
    if all(type(p) is Packed for p in parts):
        return Packed.concat(parts)
    merged: list[Any] = []
    for part in parts:
        merged.extend(part.tolist() if type(part) is Packed else part)
    return merged


def merged_call(members: list[Member]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The function's arguments for a batch: inputs along dimension 0, FILE tensors as lists of paths."""
    first = members[0].request
    inputs = []
    staged_inputs: Staged = {}
    for tensor in first.inputs:
        if tensor.datatype == "FILE":
            paths: list[Any] = []
            content_type = tensor.content_type
            for member in members:
                staged = member.staged_inputs.get(tensor.name)
                paths.append(staged.path if staged else member_tensor(member, tensor.name).data)
                content_type = staged.content_type if staged else content_type
            staged_inputs[tensor.name] = StagedFile(paths, content_type)
            inputs.append(InputTensor(tensor.name, "FILE", [len(paths)], None, content_type))
        elif len(members) == 1:
            inputs.append(tensor)
        else:
            parts = [member_tensor(m, tensor.name) for m in members]
            rows = sum(p.shape[0] for p in parts)
            inputs.append(InputTensor(tensor.name, tensor.datatype, [rows, *tensor.shape[1:]],
                                      _concat([p.data for p in parts]), tensor.content_type))
    staged_outputs: Staged = {}
    for output in first.outputs:
        if output.datatype == "FILE":
            paths = [str(m.staged_outputs[output.name].path) for m in members if output.name in m.staged_outputs]
            staged_outputs[output.name] = StagedFile(paths, output.content_type)
    merged = InferenceRequest(None, inputs, first.parameters, first.outputs)
    return merged.function_arguments(staged_inputs, staged_outputs)


def member_tensor(member: Member, name: str) -> InputTensor:
    return next(t for t in member.request.inputs if t.name == name)


def split_outputs(returned: Any, members: list[Member]) -> list[list[dict[str, Any]]]:
    """Each member's share of the merged call's outputs, by its row count (``BadFunctionOutput`` if
    the function's first dimension does not match the batch)."""
    requested = {o.name: o for o in members[0].request.outputs}
    shares: list[list[dict[str, Any]]] = [[] for _ in members]
    for item in output_items(returned):
        name = item["name"]
        if requested and name not in requested:
            continue
        wanted = requested.get(name)
        datatype = canonical_datatype(item.get("datatype") or (wanted.datatype if wanted else None))
        parts = _split_files(item, len(members)) if datatype == "FILE" else _split_rows(item, members)
        for share, part in zip(shares, parts, strict=True):
            share.append(part)
    return shares


def _split_files(item: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """A FILE output of a merged call: one path per member."""
    paths = as_plain(item.get("data"))
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or len(paths) != count:
        raise BadFunctionOutput(f"inference output {item['name']!r}: a batch of {count} requests needs a list of "
                                f"{count} paths, one per request, got {paths!r:.80}")
    return [{**item, "data": path, "shape": [1]} for path in paths]


def _split_rows(item: dict[str, Any], members: list[Member]) -> list[dict[str, Any]]:
    """A tensor output of a merged call, cut along its first dimension by each member's rows."""
    total = sum(m.rows or 0 for m in members)
    data, shape = _batch_tensor(item, total)
    row = math.prod(shape[1:])
    parts, offset = [], 0
    for member in members:
        rows = member.rows or 0
        start, end = offset * row, (offset + rows) * row
        part = data.slice(start, end) if type(data) is Packed else data[start:end]
        parts.append({**item, "data": part, "shape": [rows, *shape[1:]]})
        offset += rows
    return parts


def _batch_tensor(item: dict[str, Any], total: int) -> tuple[Any, list[int]]:
    """The output's flat data and shape, checked as ``protocol/response.py`` checks any output, and
    checked to have one row per input row of the batch."""
    where = f"inference output {item['name']!r}"
    data, _ = flatten_with_kinds(as_plain(item.get("data")))
    shape = as_plain(item.get("shape"))
    shape = [len(data)] if shape is None else shape
    problem = shape_problem(shape) or (None if shape else "shape has no first dimension (the batch)")
    if problem:
        raise BadFunctionOutput(f"{where}: {problem}")
    if shape[0] != total:
        raise BadFunctionOutput(f"{where}: first dimension {shape[0]} does not match the batch's {total} rows; "
                                "a function that declares Batching returns one row per input row")
    problem = count_problem(shape, data)
    if problem:
        raise BadFunctionOutput(f"{where}: {problem}")
    return data, shape


def batching_for(spec: FunctionSpec, max_batch_size: int | None, max_batch_delay: float | None,
                 function: str) -> BatchingSpec | None:
    """The batching in force: the docstring's ``Batching:``, overridden by serve's flags (None: no merging).

    Flags that would merge requests for a function that does not declare ``Batching:`` are refused
    (``EntryPointError``): merging is the function's contract, not the server's choice.
    """
    declared = spec.batching
    if max_batch_size is None and max_batch_delay is None:
        return declared if declared is not None and declared.merges else None
    if declared is None:
        if max_batch_size is not None and max_batch_size <= 1:
            return None
        raise EntryPointError(f"{function}: --max-batch-size/--max-batch-delay need the function to accept merged "
                              "requests: declare a `Batching:` section in its docstring (see docs/docstring-spec.md)")
    if max_batch_size is not None and max_batch_size < 1:
        raise EntryPointError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    if max_batch_delay is not None and max_batch_delay < 0:
        raise EntryPointError(f"--max-batch-delay must be 0 or more milliseconds, got {max_batch_delay * 1000:g}")
    batching = dataclasses.replace(
        declared,
        max_batch_size=declared.max_batch_size if max_batch_size is None else max_batch_size,
        max_batch_delay=declared.max_batch_delay if max_batch_delay is None else max_batch_delay)
    if not batching.merges:
        return None
    problem = dataclasses.replace(spec, batching=batching).batching_problem()
    if problem is not None:
        raise EntryPointError(f"{function}: docstring specification: {problem[0]}")
    return batching


class Batcher:
    """Merges concurrent requests into calls of one runner (one per HTTP worker process)."""

    def __init__(self, runner: Runner, max_batch_size: int, max_batch_delay: float,
                 observer: Observer | None = None, service: ServiceTime | None = None) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.observer = observer or Observer()
        self.service = service or ServiceTime()  # seconds per merged call, for admission
        self.arriving = 0  # requests on their way here (decoding, staging files)
        self.in_flight = 0  # calls sent to the runner and not answered
        self.riding = 0  # requests in those calls
        self._forming: dict[Any, Batch] = {}
        self._check_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Requests waiting for their batch to be sent."""
        return sum(len(b.members) for b in self._forming.values())

    def calls_ahead(self, admitted: int = 0) -> int:
        """Calls a new request would wait for: those sent, and the batches that the requests waiting or on
        their way will fill (a batch forming is one call, whatever its size). ``admitted``: requests the
        data plane let in and has not answered, some of them still being read."""
        queued = max(admitted - self.riding, self.waiting + self.arriving)
        return self.in_flight + max(len(self._forming), math.ceil(queued / self.max_batch_size))

    def arrive(self) -> None:
        """A request entered the data plane: the batch forming now may wait for it."""
        self.arriving += 1

    def leave(self) -> None:
        """A request that arrived will not join (it failed before): stop waiting for it."""
        self.arriving -= 1
        self._schedule_check()

    async def call(self, request: InferenceRequest, staged_inputs: Staged | None, staged_outputs: Staged | None,
                   deadline: float | None) -> Any:
        """Run the request in a batch; its share of the outputs (the function's dicts)."""
        loop = asyncio.get_running_loop()
        self.arriving -= 1
        if deadline is not None and deadline <= loop.time():  # never merged: its rows would ride along
            raise Timeout("the request's deadline had passed before inference could start; it did not run")
        staged_inputs, staged_outputs = staged_inputs or {}, staged_outputs or {}
        rows, key = _rows_and_key(request, staged_inputs)
        member = Member(request, staged_inputs, staged_outputs, deadline, rows, key, loop.time(), loop.create_future())
        self._join(member)
        while True:
            timeout = None if member.deadline is None else max(0.0, member.deadline - loop.time())
            try:
                return await asyncio.wait_for(asyncio.shield(member.future), timeout)
            except TimeoutError:
                batch = member.batch
                if batch is not None and not batch.dispatched:
                    self._leave_batch(member, batch)
                    raise Timeout("the request's deadline passed while it waited to be batched; it did not run") from None
                if batch is None or len(batch.members) == 1:
                    member.deadline = None  # alone in its call: the runner enforces the deadline and answers
                    continue
                member.abandoned = True
                raise Timeout(f"inference did not finish within the request's deadline; it was merged with "
                              f"{len(batch.members) - 1} other request(s) into one call, which goes on for them; "
                              "this request's rows are dropped and will not be retried") from None

    def _join(self, member: Member) -> None:
        if member.rows is None:
            self._dispatch(Batch(member.key, [member], 0, member.joined))  # runs on its own
            return
        batch = self._forming.get(member.key)
        if batch is not None and batch.rows + member.rows > self.max_batch_size:
            self._dispatch(batch)
            batch = None
        if batch is None:
            batch = self._forming[member.key] = Batch(member.key, started=member.joined)
        batch.members.append(member)
        batch.rows += member.rows
        member.batch = batch
        if batch.rows >= self.max_batch_size:
            self._dispatch(batch)
        else:
            self._schedule_check()

    def _leave_batch(self, member: Member, batch: Batch) -> None:
        batch.members.remove(member)
        batch.rows -= member.rows or 0
        if not batch.members and self._forming.get(batch.key) is batch:
            del self._forming[batch.key]
        elif batch.members:
            batch.started = min(m.joined for m in batch.members)

    def _schedule_check(self) -> None:
        """Decide in the next loop iteration, once every request already received has come this far."""
        if self._check_handle is None:
            self._check_handle = asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.in_flight or not self._forming:
            return  # a batch keeps growing while the function is busy; a finished call checks again
        loop = asyncio.get_running_loop()
        oldest = min(self._forming.values(), key=lambda b: b.started)
        due = oldest.started + self.max_batch_delay
        if self.arriving <= 0 or loop.time() >= due:
            self._dispatch(oldest)
        else:
            self._timer = loop.call_at(due, self._check)

    def _dispatch(self, batch: Batch) -> None:
        if self._forming.get(batch.key) is batch:
            del self._forming[batch.key]
        batch.dispatched = True
        self.in_flight += 1
        self.riding += len(batch.members)
        now = asyncio.get_running_loop().time()
        self.observer.batch_sent(len(batch.members), [now - m.joined for m in batch.members])
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: Batch) -> None:
        riding = len(batch.members)
        try:
            await self._serve(batch.members)
        finally:
            self.in_flight -= 1
            self.riding -= riding
            self._schedule_check()

    async def _serve(self, members: list[Member]) -> None:
        """One call for ``members``; when a merged call fails, each half is run again, so only the members
        that cause the failure fail, each with its own error."""
        try:
            shares = await self._call(members)
        except Timeout as error:  # every member's deadline has passed: nothing to re-run
            _fail(members, error)
            return
        except MLComponentError as error:
            live = [m for m in members if not m.abandoned and not m.future.done()]
            if len(members) == 1 or not live:
                _fail(members, error)
                return
            log.info("a merged call of %d requests failed (%s); running each half again", len(members),
                     type(error).__name__)
            half = (len(live) + 1) // 2
            for part in (live[:half], live[half:]):
                if part:
                    await self._serve(part)
            return
        except Exception as error:  # noqa: BLE001 - never leave a member waiting
            log.exception("a batched call failed unexpectedly")
            _fail(members, error)
            return
        for member, share in zip(members, shares, strict=True):
            if not member.abandoned and not member.future.done():
                member.future.set_result(share)

    async def _call(self, members: list[Member]) -> list[Any]:
        """Call the function once for ``members`` (timed for admission); each member's share."""
        deadlines = [m.deadline for m in members]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        returned = await self.service.measure(self.runner.call(*merged_call(members), deadline),
                                              self.observer.queue_waited)
        return split_outputs(returned, members) if members[0].rows is not None else [returned]


def _fail(members: list[Member], error: BaseException) -> None:
    for member in members:
        if not member.abandoned and not member.future.done():
            member.future.set_exception(error)
