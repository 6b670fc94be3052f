"""Phoenix.PubSub, mirrored on Ray: host actors publish, Serve replicas subscribe.

* `PubSub` (`broker`) is one named detached actor (`pubsub`, restarted by Ray). It
  keeps the routes: per subscriber (a Serve replica), the topics it wants and where
  it takes events directly (its link's endpoint). Topics are exact (`user:<id>`) or
  prefix patterns ending in `*` (`event:*`). It also keeps a bounded queue of events
  per subscriber, for those no publisher could hand over; a subscriber long-polls
  that queue (`poll`, waiting up to ~1 s).
* `Publisher` (one per process, `get_publisher`) buffers `publish()` calls and every
  ~15 ms hands each subscriber its share in one message over a link of its own (as
  Phoenix.PubSub broadcasts to each node's server, not through a central one), or
  through PubSub (`forward`) when it cannot; events nobody listens to are dropped.
  To know who listens, a publisher in use *watches* the routes: a watch call (a long
  poll) answers as soon as they change, and the next watch call acknowledges the
  change. A subscription answers only once every watching publisher has
  acknowledged it, so an event published after `Subscriber.subscribe` returned is
  never dropped. A watcher that goes quiet for `LEASE_S` is no longer waited for,
  and a publisher trusts its copy only until `LEASE_S` after it sent its last watch
  call, so neither side outlives the other. A publisher that does not trust its copy
  asks for the routes before a flush.
* `Subscriber` (one per replica) listens for publishers' links, keeps the local
  callbacks per topic, registers its topics with PubSub, and re-registers them after
  PubSub restarts (PubSub then no longer knows it). Events are ephemeral: whatever
  was lost meanwhile, clients resync when they rejoin; `on_resync` callbacks (the
  read caches) reload.

Topics are opaque strings: PubSub gives none of them a meaning.
"""

from .broker import PubSub, pubsub_handle
from .publisher import Publisher, get_publisher
from .subscriber import Subscriber

__all__ = ["PubSub", "Publisher", "Subscriber", "get_publisher", "pubsub_handle"]
