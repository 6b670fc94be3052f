"""Phoenix.PubSub, mirrored on Ray: host actors publish, Serve replicas subscribe.

* `PubSub` (`broker`) is one named detached actor (`pubsub`, restarted by Ray). It
  keeps, per subscriber (a Serve replica), the set of topics it wants and a bounded
  queue of events for it; a subscriber long-polls that queue (`poll`, waiting up to
  ~1 s). Topics are exact (`user:<id>`) or prefix patterns ending in `*` (`event:*`).
* `Publisher` (one per process, `get_publisher`) buffers `publish()` calls and sends
  them every ~15 ms in one Ray call, dropping events nobody listens to. To know
  who listens, a publisher in use *watches* the set of subscribed topics: a watch
  call (a long poll) answers as soon as the set changes, and the next watch call
  acknowledges the change. A subscription whose topic is new answers only once
  every watching publisher has acknowledged it, so an event published after
  `Subscriber.subscribe` returned is never dropped. A watcher that goes quiet for
  `LEASE_S` is no longer waited for, and a publisher trusts its copy only until
  `LEASE_S` after it sent its last watch call, so neither side outlives the other.
  A publisher that does not trust its copy asks for the set before a flush.
* `Subscriber` (one per replica) keeps the local callbacks per topic, registers its
  topics with PubSub, and re-registers them after PubSub restarts (PubSub then no
  longer knows it). Events are ephemeral: whatever was lost meanwhile, clients
  resync when they rejoin; `on_resync` callbacks (the read caches) reload.

Topics are opaque strings: PubSub gives none of them a meaning.
"""

from .broker import PubSub, pubsub_handle
from .publisher import Publisher, get_publisher
from .subscriber import Subscriber

__all__ = ["PubSub", "Publisher", "Subscriber", "get_publisher", "pubsub_handle"]
