"""How the CLI shows things: result tables and transfer progress bars (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from mlcomponent.client import InferenceResult

PROGRESS_FROM = 4 * 1024 * 1024  # bytes: smaller transfers finish before a bar helps


def _preview(value: object, limit: int = 12) -> str:
    tolist = getattr(value, "tolist", None)
    flat = tolist() if tolist is not None else value
    stack = [flat]
    items: list[object] = []
    while stack and len(items) <= limit:
        node = stack.pop(0)
        if isinstance(node, list):
            stack[0:0] = node
        else:
            items.append(node)
    text = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in items[:limit])
    return text + (", …" if len(items) > limit else "")


def print_result(result: InferenceResult, saved: dict[str, Path]) -> None:
    table = Table(title="outputs", show_lines=False)
    for column in ("name", "datatype", "shape", "value"):
        table.add_column(column, overflow="fold")
    for output in result.raw.get("outputs", []):
        name = output["name"]
        if name in result.files:
            value = str(saved.get(name) or result.files[name].url)
        else:
            value = _preview(result.outputs[name])
        table.add_row(name, output["datatype"], str(output.get("shape")), value)
    Console().print(table)


@contextmanager
def transfer_progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress callback with a bar on stderr when the transfer is large (or of unknown size)."""
    if 0 < total < PROGRESS_FROM:
        yield None
        return
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        seen = [0]

        def advance(count: int) -> None:
            seen[0] += count
            if seen[0] >= PROGRESS_FROM or total:
                bar.update(task, advance=count)

        yield advance
