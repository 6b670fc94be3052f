import uuid
from datetime import UTC, datetime
from decimal import Decimal


def test_bet_flow(lootify):
    user = uuid.uuid4()
    lootify.wallet(user).deposit(10_000, reference_id="dep")
    ev = lootify.create_event("A x B", "football", datetime.now(UTC))
    mk = lootify.create_market(ev["id"], "Winner", "fixed_odds",
                               [{"key": "home", "name": "Home", "odds": "2.10"},
                                {"key": "away", "name": "Away", "odds": "1.80"}])
    assert mk["status"] == "open"
    bet = lootify.place_bet(user, mk["id"], "home", 1_000, odds="2.10")
    assert bet["status"] == "accepted" and bet["potential_payout"] == 2_100
    assert lootify.wallet(user).balance().balance == 9_000
    market = lootify.market(mk["id"])
    assert market.odds()["home"] <= Decimal("2.10")
    market.close()
    market.settle("home")
    import time
    deadline = time.time() + 10
    while lootify.wallet(user).balance().balance != 9_000 + 2_100:
        assert time.time() < deadline
        time.sleep(0.05)
