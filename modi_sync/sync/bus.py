"""Sending stored updates to the other instances, without ever holding up storage.

The writer hands each committed batch to ``publish`` and goes on with the next batch;
one task sends what accumulated, on a Redis connection of its own. A Redis that hangs
or is down only delays (and past ``max_pending`` drops, with a warning) these messages:
storing and local fan-out go on, and other instances' clients get the updates from
storage on their next sync.

Updates are published only while another instance listens: a server running alone
would otherwise publish every batch to nobody, a good part of the CPU of an edit
(docs/performance.md, "Figures behind the code"). Who listens is learnt so that no
instance can miss an update of a room it holds:

- An instance that starts listening says hello on the channel, and every instance that
  hears it publishes from then on and answers; the new instance waits for those
  answers (at most ``hello_timeout``) before it serves anyone, so every update stored
  after its first room is loaded is published to it.
- Every ``recheck`` seconds an instance asks Redis how many listen, and stops
  publishing when it is the only one. A hello heard while the question was out wins.
- Hearing any message from another instance means someone listens.

Redis pub/sub delivers at most once. An instance that may have missed messages (its
subscription was lost, or another instance's message numbers skip: ``Gaps``) reads its
rooms from storage again (``RoomRegistry.catch_up``); everything published was stored
first, so storage has all of it. A message that failed to go out shows as a gap only
when a later one arrives, so a publisher with nothing more to send says hello again at
its next recheck, and the others catch up within ``recheck`` seconds of Redis being
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque

from storage.doc_events import (
    ACK,
    AWARENESS,
    AWARENESS_QUERY,
    HELLO,
    UPDATE,
    DocChannel,
    DocKey,
    DocMessage,
    Record,
)

from ..metrics import BUS_LAG

log = logging.getLogger(__name__)

_Record = Record

# Awareness waiting to go out, at most: it is ephemeral, and a client renews its state
# every 15 s, so what is dropped when Redis lags is soon said again.
MAX_EPHEMERAL = 10_000


class UpdatePublisher:
    def __init__(
        self,
        channel: DocChannel,
        instance: uuid.UUID,
        *,
        max_pending: int = 100_000,
        recheck: float = 5.0,
        hello_timeout: float = 2.0,
    ) -> None:
        self._channel = channel
        self._instance = instance
        self._hello: _Record = (HELLO, (instance, ""), b"", 0)
        self._pending: deque[tuple[DocKey, bytes, int]] = deque()  # (key, update, seq)
        self._control: list[_Record] = []  # hellos and answers, sent before updates
        self._ephemeral: deque[_Record] = deque(maxlen=MAX_EPHEMERAL)  # awareness
        self._max_pending = max_pending
        self._recheck = recheck
        self._hello_timeout = hello_timeout
        self.others = False  # another instance listens: publish
        self._skipped = False  # a number was skipped for the batches not published
        self._failed = False  # a message failed to go out and no later one has since
        self._heard = 0  # hellos and messages heard from others, to order them with rechecks
        self._answers: set[uuid.UUID] = set()
        self._answered = asyncio.Event()
        self._expected = 0
        self._recheck_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def publish(self, updates: list[tuple[DocKey, bytes, int]]) -> None:
        """Stored (key, update, seq) to go out to the other instances."""
        if not self.others:  # nobody else listens: nothing to send
            if not self._skipped:  # but if one did unbeknown, it will see a gap
                self._channel.skip()
                self._skipped = True
            return
        self._skipped = False
        self._pending.extend(updates)
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self._channel.skip()
            log.warning("Redis is not keeping up: %d updates not sent to other instances",
                        overflow)
        self._wakeup.set()

    def publish_awareness(self, key: DocKey, update: bytes) -> None:
        """An awareness update of ``key``'s clients here, for the other instances."""
        if self.others:
            self._ephemeral.append((AWARENESS, key, update, 0))
            self._wakeup.set()

    def query_awareness(self, key: DocKey) -> None:
        """Ask the instances holding ``key`` for its clients' awareness."""
        if self.others:
            self._ephemeral.append((AWARENESS_QUERY, key, b"", 0))
            self._wakeup.set()

    async def start(self) -> None:
        """Say hello and wait for the other instances' answers; call it once subscribed."""
        self._task = asyncio.create_task(self._run(), name="update-publisher")
        try:
            receivers = await self._channel.publish([self._hello])
        except Exception as exc:
            log.warning("could not say hello to other instances: %s", exc)
            receivers = 0
        self._expected = max(receivers - 1, 0)  # the hello reached this instance too
        if self._expected:
            self.others = True
            self._check_answers()
            try:
                await asyncio.wait_for(self._answered.wait(), self._hello_timeout)
            except TimeoutError:
                log.warning("%d of %d listeners answered the hello; serving anyway",
                            len(self._answers), self._expected)
        self._schedule_recheck()

    def subscribed_again(self) -> None:
        """The subscription came back after a loss: tell the others again."""
        self._control.append(self._hello)
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        """Stored updates waiting to be published."""
        return len(self._pending)

    def heard(self, message: DocMessage) -> None:
        """A message of another instance: someone listens."""
        BUS_LAG.observe(max(0.0, time.time() - message.sent_at))  # clocks may disagree
        self._heard += 1
        self._someone_listens()
        for event in message.events:
            if event.kind == HELLO:
                self._control.append((ACK, (message.sender, ""), b"", 0))
                self._wakeup.set()
            elif event.kind == ACK and event.key[0] == self._instance:
                self._answers.add(message.sender)
                self._check_answers()

    def _check_answers(self) -> None:
        if len(self._answers) >= self._expected:
            self._answered.set()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()

    def _schedule_recheck(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._recheck, self._due)

    def _due(self) -> None:
        self._recheck_due = True
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                if self._failed and self._recheck_due and self.others:
                    # Nothing may follow the failed message to reveal its gap: a hello
                    # does (the others answer it, as they do any hello).
                    self._control.append(self._hello)
                if self._control:
                    control, self._control = self._control, []
                    await self._channel.publish(control)
                    self._published_again()
                    # Numbered after any skip so far: what goes unpublished from now
                    # on must skip a number again, after this message.
                    self._skipped = False
                if self._ephemeral:
                    ephemeral = list(self._ephemeral)
                    self._ephemeral.clear()
                    await self._channel.publish(ephemeral)
                    self._published_again()
                while self._pending:
                    batch = [self._pending.popleft()
                             for _ in range(min(len(self._pending), 1000))]
                    await self._channel.publish(
                        (UPDATE, key, u, seq) for key, u, seq in batch)
                    self._published_again()
            except Exception as exc:
                if not self._failed:  # once per outage, not once per batch
                    log.warning("publishing to other instances failed: %s; their clients "
                                "get these updates from storage once Redis is back", exc)
                self._failed = True
            if self._recheck_due:
                self._recheck_due = False
                try:
                    await self._recheck_listeners()
                except Exception as exc:
                    log.warning("asking Redis who listens failed: %s", exc)
                finally:
                    self._schedule_recheck()

    def _published_again(self) -> None:
        if self._failed:
            log.warning("publishing to other instances works again")
            self._failed = False

    async def _recheck_listeners(self) -> None:
        heard = self._heard
        listeners = await self._channel.subscribers()
        if heard == self._heard:  # a hello heard while the question was out wins
            if listeners > 1:  # this instance's own subscription is one
                self._someone_listens()
            else:
                self.others = False

    def _someone_listens(self) -> None:
        """Another instance listens (again). If updates went unpublished meanwhile, the
        number they skipped must reach it now, in a hello: no later update may follow
        to show the gap, and it reads from storage only when it sees one."""
        if not self.others and self._skipped:
            self._control.append(self._hello)
            self._wakeup.set()
        self.others = True


class Gaps:
    """Tells when this instance may have missed messages of another.

    Either the sender's numbers skip, or the first message heard from a sender is
    neither its first (its hello on starting) nor its answer to this instance's hello:
    it served a while without publishing here (its hello or this one's was lost).
    """

    def __init__(self, instance: uuid.UUID) -> None:
        self._instance = instance
        # Per sender: the last number heard, or None for a sender heard of before the
        # subscription was renewed (its next number is taken as it comes).
        self._last: dict[uuid.UUID, int | None] = {}

    def missed(self, message: DocMessage) -> bool:
        number = message.number
        if not number:
            return False  # outside the sequence (a deletion): not numbered
        known = message.sender in self._last
        last = self._last.get(message.sender)
        self._last[message.sender] = number
        if last is not None:
            return number != last + 1
        return not known and number > 1 and not self._answers_me(message)

    def _answers_me(self, message: DocMessage) -> bool:
        return any(e.kind == ACK and e.key[0] == self._instance for e in message.events)

    def forget(self) -> None:
        """The subscription was renewed, and its rooms are read from storage again."""
        self._last = dict.fromkeys(self._last)
