"""The head's side of filling joined hosts' dataset caches before a job (``data.transfer``).

Before a job's first Welcome to a joined host's actors, each such host gets the job's
dataset once: the head offers it (``CacheOffer``, hashed once per loaded dataset), the
agent answers that it holds it or credits chunks, and says where its copy lies
(``HostDataset``); those actors' Welcome names that copy. A later job on the same data
costs one offer and one answer. This module keeps the exchange's state; the pool moves its
messages.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from ..data.shm import SegmentReader
from ..data.transfer import Sender, make_offer
from ..errors import ProtocolError
from ..messages import CACHE_ARRAYS, CacheCredit, CacheHave, CacheOffer, CacheRefused, DatasetInfo, HostDataset, Message

FILL_MESSAGES = (CacheHave, CacheCredit, CacheRefused, HostDataset)   # what agents answer a fill with
OFFERS_KEPT = 8   # offers remembered (by dataset segment), so a later job does not hash its data again


class Fills:
    """The fills of one job: a ``Sender`` per host, and what each host holds at the end."""

    def __init__(self, offer: CacheOffer, reader: SegmentReader, data: DatasetInfo, hosts: list[str]) -> None:
        self.offer, self._reader = offer, reader
        arrays = {name: reader.attach(ref.segment, ref.dtype, ref.shape)
                  for name, ref in zip(CACHE_ARRAYS, (data.x_train, data.y_train, data.x_test, data.y_test))}
        self.senders = {name: Sender(offer, arrays) for name in hosts}
        self.held: dict[str, DatasetInfo] = {}      # host -> where it holds the data
        self.refused: dict[str, CacheRefused] = {}  # host -> why it would not

    def start(self) -> list[tuple[str, Message]]:
        return [(name, m) for name, sender in self.senders.items() for m in sender.start()]

    def handle(self, host: str, msg: Message) -> list[Message]:
        """An agent's answer in, what its sender may send out."""
        sender = self.senders.get(host)
        if sender is None or msg.fingerprint != self.offer.fingerprint:
            return []   # late, or another job's
        if isinstance(msg, HostDataset):
            if sender.done:
                self.held[host] = msg.data
            return []
        try:
            out = sender.handle(msg)
        except ProtocolError as exc:
            self.refused[host] = CacheRefused(fingerprint=self.offer.fingerprint, message=str(exc)[:4096],
                                              exit_code=exc.exit_code)
            return []
        if sender.refused is not None:
            self.refused[host] = sender.refused
        return out

    def pending(self, joined: set[str]) -> list[str]:
        """Hosts still joined whose fill has not ended."""
        return [h for h in self.senders if h in joined and h not in self.held and h not in self.refused]

    def close(self) -> None:
        self.senders = {}
        self._reader.close()


class Offers:
    """The offers of recently loaded datasets, hashed in a worker thread the first time."""

    def __init__(self) -> None:
        self._offers: OrderedDict[str, CacheOffer] = OrderedDict()

    async def fills(self, data: DatasetInfo, hosts: list[str]) -> Fills:
        reader = SegmentReader()
        try:
            offer = self._offers.get(data.x_train.segment)
            if offer is None:
                arrays = {name: reader.attach(ref.segment, ref.dtype, ref.shape)
                          for name, ref in zip(CACHE_ARRAYS, (data.x_train, data.y_train, data.x_test, data.y_test))}
                offer = await asyncio.to_thread(make_offer, data.spec, data.n_features, data.n_classes, arrays)
                del arrays
                self._offers[data.x_train.segment] = offer
                while len(self._offers) > OFFERS_KEPT:
                    self._offers.popitem(last=False)
            return Fills(offer, reader, data, hosts)
        except BaseException:
            reader.close()
            raise
