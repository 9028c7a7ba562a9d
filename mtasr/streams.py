"""Per-stream state of a stateful stage, keyed by the sequence's correlation id.

A correlation id is a non-zero uint64 or a string (Triton accepts both). Streams are keyed by the
whole id as the request carries it: an ``int`` or a ``str``, so the numeric id 42 and the string
id "42" are two streams.

Triton's implicit state does not work in the python backend, so each stage keeps a table:
created at START, removed at END, and evicted once a stream has been idle longer than the
sequence batcher's idle timeout (after which Triton itself refuses the sequence without START),
so an abandoned stream cannot leak memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

State = TypeVar("State")
#: A sequence's correlation id as Triton's request carries it (uint64 or string).
StreamId = int | str


def describe_stream(stream: StreamId) -> str:
    """How an error message names a stream: `sequence 42`, or `sequence 'room-0001'` for a string id."""
    return f"sequence {stream!r}"


class RequestError(Exception):
    """A request that cannot be served; answered with this message, other requests carry on."""


@dataclass
class StageRequest:
    """One request as a stage sees it: the sequence controls and its tensors without the batch dim."""

    stream: StreamId
    start: bool
    end: bool
    inputs: dict


class StreamTable(Generic[State]):
    def __init__(
        self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic, capacity: int | None = None
    ) -> None:
        """``capacity``: the most streams held at once; a START beyond it is refused (None: no limit)."""
        self.idle_timeout_s = idle_timeout_s
        self.capacity = capacity
        self._clock = clock
        self._states: dict[StreamId, tuple[State, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, stream: StreamId) -> bool:
        return stream in self._states

    def ids(self) -> list[StreamId]:
        """Every held stream's id (a snapshot)."""
        with self._lock:
            return list(self._states)

    def states(self) -> list[State]:
        """Every held stream's state (a snapshot)."""
        with self._lock:
            return [state for state, _ in self._states.values()]

    def start(self, stream: StreamId, state: State) -> State:
        """A new stream, or a restart: a second START on a live sequence begins it afresh."""
        with self._lock:
            self._states[stream] = (state, self._clock())
        return state

    def get(self, stream: StreamId) -> State:
        with self._lock:
            entry = self._states.get(stream)
            if entry is None:
                raise RequestError(
                    f"{describe_stream(stream)} is not active here: it never started, already ended, "
                    "was evicted after being idle, or its START request was rejected"
                )
            self._states[stream] = (entry[0], self._clock())
            return entry[0]

    def free(self) -> int | None:
        """How many more streams may start (None: no limit)."""
        return None if self.capacity is None else max(0, self.capacity - len(self))

    def admit(self, request: StageRequest, new_state: Callable[[], State]) -> State:
        """The request's stream state: a fresh one on START (a restart if it was live), else the live one.

        A START of a new stream when the table is full is refused at once with a "server full" error,
        rather than left to wait for a slot (where Triton's idle timeout would later drop it)."""
        if request.start:
            if self.capacity is not None and request.stream not in self and len(self) >= self.capacity:
                self.evict_idle()
                if len(self) >= self.capacity:
                    raise RequestError(
                        f"server full: {self.capacity} streams are open, the most this server instance takes; "
                        f"{describe_stream(request.stream)} was not started, retry later"
                    )
            self.start(request.stream, new_state())
        return self.get(request.stream)

    def end(self, stream: StreamId) -> None:
        with self._lock:
            self._states.pop(stream, None)

    def evict_idle(self) -> list[StreamId]:
        """Drop streams idle for longer than the timeout; return their ids."""
        now = self._clock()
        with self._lock:
            stale = [s for s, (_, seen) in self._states.items() if now - seen > self.idle_timeout_s]
            for stream in stale:
                del self._states[stream]
        return stale


def waves(requests: list[StageRequest]) -> list[list[int]]:
    """Request indices split into in-order groups with at most one request per stream each.

    The sequence batcher never puts two requests of one sequence in a batch, but a stage must not
    depend on that: a stream's requests are applied in arrival order, one per batched graph call.
    """
    groups: list[list[int]] = []
    depth: dict[StreamId, int] = {}
    for index, request in enumerate(requests):
        level = depth.get(request.stream, 0)
        depth[request.stream] = level + 1
        if level == len(groups):
            groups.append([])
        groups[level].append(index)
    return groups
