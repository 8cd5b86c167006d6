"""Frames waiting for one connection's transport, with back-pressure."""

from typing import Callable, Iterable, Iterator, List, Optional


class Outbox:
    """Frames waiting for one connection's transport.

    Short messages go first; a bundle transfer is pulled one frame at a time, and only
    while the transport's buffer is below its high-water mark.  So the reader never
    waits for the channel (a tty echoing our bytes back could otherwise deadlock us),
    the write side has backpressure, and little of a transfer is in memory beyond the
    encoded bundle.  More than ``max_frames`` short messages waiting means the guest
    does not read them: ``put`` refuses more, and the connection drops those replies.
    """

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        # A list, not a deque: an agent holds thousands of these, nearly all empty, and
        # an empty deque costs ten times an empty list; it never holds more than max_frames.
        self._control: List[bytes] = []
        self._transfer: Optional[Iterator[bytes]] = None
        self._on_done: Optional[Callable[[], None]] = None

    def put(self, frame: bytes) -> bool:
        """Queue a short message; False if ``max_frames`` already wait (it is dropped)."""
        if len(self._control) >= self.max_frames:
            return False
        self._control.append(frame)
        return True

    def start_transfer(self, frames: Iterable[bytes], on_done: Callable[[], None]) -> None:
        # A new GET_BUNDLE supersedes one still streaming: the guest started over.
        self._transfer = iter(frames)
        self._on_done = on_done

    def cancel_transfer(self) -> None:
        self._transfer = None
        self._on_done = None

    def next_frame(self) -> Optional[bytes]:
        if self._control:
            return self._control.pop(0)
        while self._transfer is not None:
            try:
                return next(self._transfer)
            except StopIteration:
                # The previous frame, the last, was taken: the transfer is complete.
                done, self._transfer, self._on_done = self._on_done, None, None
                if done is not None:
                    done()
        return None
