"""The head's side of filling joined hosts' dataset caches before a job (``data.transfer``).

Before a job's first Welcome to a joined host's actors, each such host gets the job's
dataset once: the head offers it (``CacheOffer``, hashed once per loaded dataset), the
agent answers that it holds it or credits chunks, and says where its copy lies
(``HostDataset``); those actors' Welcome names that copy. A later job on the same data
costs one offer and one answer. A host that streams its training rows (``join --data
stream``) is offered the test split alone: the same exchange, with empty training arrays.
This module keeps the exchange's state; the pool moves its messages.
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
        arrays = _arrays(reader, data, test_only=offer.arrays[0].shape[0] == 0)
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

    async def fills(self, data: DatasetInfo, hosts: list[str], test_only: bool = False) -> Fills:
        """The fills of ``hosts``: of the whole dataset, or of its test split alone."""
        reader = SegmentReader()
        try:
            key = data.x_train.segment + (" test" if test_only else "")
            offer = self._offers.get(key)
            if offer is None:
                arrays = _arrays(reader, data, test_only)
                spec = f"{data.spec} (test split)" if test_only else data.spec
                offer = await asyncio.to_thread(make_offer, spec, data.n_features, data.n_classes, arrays)
                del arrays
                self._offers[key] = offer
                while len(self._offers) > OFFERS_KEPT:
                    self._offers.popitem(last=False)
            return Fills(offer, reader, data, hosts)
        except BaseException:
            reader.close()
            raise


def _arrays(reader: SegmentReader, data: DatasetInfo, test_only: bool) -> dict:
    """The offer's arrays, mapped from the head's cache; ``test_only``: the training ones empty."""
    arrays = {name: reader.attach(ref.segment, ref.dtype, ref.shape)
              for name, ref in zip(CACHE_ARRAYS, (data.x_train, data.y_train, data.x_test, data.y_test))}
    if test_only:
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:0], arrays["y_train"][:0]
    return arrays


class JobData:
    """Where the running job's data lies for each joined host, and the fills of hosts that
    joined while it runs (one that came back): their actors' hellos wait until their host
    holds the data, so a replacement's Welcome never names a copy that is not there."""

    def __init__(self, data: DatasetInfo, offer: CacheOffer, test_offer: CacheOffer,
                 held: dict[str, DatasetInfo]) -> None:
        self.data, self._offers = data, (offer, test_offer)   # the whole dataset's, its test split's
        self.held = dict(held)                      # host -> where it holds the data
        self.data_of: dict[str, DatasetInfo] = {}   # actor id -> its host's copy (the job core reads it)
        self._late: dict[str, Fills] = {}           # host -> its fill, started after the job
        self._waiting: dict[str, list[tuple[bytes, Message]]] = {}   # host -> hellos held back

    def joined(self, host: str, test_only: bool = False) -> list[Message]:
        """A host joined mid-job: what to send it to start its fill (``test_only``: it streams
        its training rows)."""
        self.held.pop(host, None)   # an earlier agent's copy went with it
        self._drop(host)
        self._late[host] = fills = Fills(self._offers[test_only], SegmentReader(), self.data, [host])
        return [m for _name, m in fills.start()]

    def hold(self, host: str, identity: bytes, hello: Message) -> bool:
        """Keep a hello back while its host's fill runs (True)."""
        if host not in self._late:
            return False
        self._waiting.setdefault(host, []).append((identity, hello))
        return True

    def answer(self, host: str, msg: Message) -> tuple[list[Message], list[tuple[bytes, Message]]]:
        """An agent's answer to a late fill: (replies to it, hellos released)."""
        fills = self._late.get(host)
        if fills is None:
            return [], []
        replies = fills.handle(host, msg)
        if host in fills.held:
            self.held[host] = fills.held[host]
            self._late.pop(host).close()
            return replies, self._waiting.pop(host, [])
        if host in fills.refused:   # its actors stay out of this job
            self._drop(host)
        return replies, []

    def close(self) -> None:
        for host in list(self._late):
            self._drop(host)

    def _drop(self, host: str) -> None:
        fills = self._late.pop(host, None)
        if fills is not None:
            fills.close()
        self._waiting.pop(host, None)
