import uuid


def test_deposit_and_balance(lootify):
    w = lootify.wallet(uuid.uuid4())
    assert w.deposit(10_000, reference_id="dep-1").balance == 10_000
    assert tuple(w.balance()) == (10_000, 10_000, 0)
