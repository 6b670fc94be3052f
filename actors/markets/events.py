"""What subscribers hear of a market's committed cycle (through PubSub): odds (a
raffle's sales) and status on `event:<event id>`, a user's bets on `user:<user id>`."""

from __future__ import annotations

from actors.pubsub import Publisher

from .store import Stored


def publish_cycle(publisher: Publisher, stored: Stored) -> None:
    """Odds are coalesced per market, so a burst of bets gives at most one update per
    market per flush."""
    publish, wants = publisher.publish, publisher.wants
    for market_id, m in stored.markets.items():
        change = stored.changes.get(market_id)
        topic = f"event:{m.event_id}"
        if change is None or not wants(topic):
            continue
        if change == "status_changed":
            publish(
                topic,
                "status_changed",
                {"market_id": m.id, "status": m.status, "version": m.version},
            )
        if m.raffle is not None:  # a raffle has no odds: its sales are the news
            publish(
                topic,
                "sales_updated",
                {"market_id": m.id, "sold": len(m.raffle.holders),
                 "tickets": m.raffle.terms.tickets, "version": m.version},
                coalesce=m.id,
            )
            continue
        publish(
            topic,
            "odds_updated",
            {"market_id": m.id, "odds": m.odds_view(), "version": m.version},
            coalesce=m.id,
        )
    for bet in stored.new_bets:
        topic = f"user:{bet.user_id}"
        if wants(topic):
            publish(topic, "bet_placed", bet.view(stored.bet_market[bet.id]))
    seen = set()
    for bet in stored.settled:
        topic = f"user:{bet.user_id}"
        if bet.id not in seen and wants(topic):
            seen.add(bet.id)
            market_id = next(mid for mid, m in stored.markets.items() if bet.id in m.bets)
            publish(topic, "bet_settled", bet.view(market_id))
