"""Weight budgets alone (swarm.trust.budget): a peer's claims never add up to more than the coordinator let it train."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from swarm.trust.budget import (
    BudgetFile,
    WeightBudgets,
    WeightLedger,
    allowance,
    budget_slack,
    budgets_from_peers,
    remaining_budget,
    write_budgets,
)

NOW = 1000.0
TARGET_BATCH, CHUNK = 256, 64


def info(peer_id, credited, leased):
    return SimpleNamespace(peer_id=peer_id, samples_contributed=credited, samples_leased=leased)


def budgets(*peers, fetched_at=NOW):
    return budgets_from_peers(peers, slack=budget_slack(target_batch_size=TARGET_BATCH, chunk_size=CHUNK),
                              fetched_at=fetched_at, heartbeat_interval_s=10.0)


def test_allowance_is_credited_plus_leased_plus_slack():
    assert allowance(credited=640, leased=128, slack=256) == 1024
    assert allowance(credited=-5, leased=math.nan, slack=256) == 256  # a malformed answer only shrinks it
    assert remaining_budget(allowance=1024, accepted=1000) == 24
    assert remaining_budget(allowance=1024, accepted=5000) == 0.0
    assert budget_slack(target_batch_size=256, chunk_size=64) == 256
    assert budget_slack(target_batch_size=8, chunk_size=64) == 128  # the chunk in training and the prefetched one


def test_newcomer_without_credit_gets_a_small_budget_for_its_first_chunk():
    ledger = WeightLedger()
    caps = ledger.caps(["new"], budgets(), now=NOW)  # the coordinator has not even listed it yet
    assert 0 < caps["new"] <= TARGET_BATCH
    assert caps["new"] >= CHUNK  # enough for its first leased chunk
    caps = ledger.caps(["new"], budgets(info("new", 0, CHUNK)), now=NOW)
    assert caps["new"] == CHUNK + TARGET_BATCH


def test_a_peer_claiming_a_million_is_cut_to_its_budget_and_then_to_nothing():
    ledger, view = WeightLedger(), budgets(info("liar", 128, 64))
    granted = []
    for _ in range(5):
        cap = ledger.caps(["liar"], view, now=NOW)["liar"]
        granted.append(min(1e6, cap))
        ledger.charge("liar", granted[-1])
    assert granted[0] == 128 + 64 + TARGET_BATCH and granted[1:] == [0.0] * 4
    assert ledger.accepted["liar"] == 128 + 64 + TARGET_BATCH


def test_honest_peers_are_never_cut_in_a_normal_run():
    """Four peers lease a chunk, train it over rounds (claiming what they accumulated), report it, lease the next;
    receivers refresh budgets once per heartbeat, between rounds, so they always lag a little."""
    peers = [f"p{i}" for i in range(4)]
    credited, leased = dict.fromkeys(peers, 0), dict.fromkeys(peers, CHUNK * 2)  # one in training, one prefetched
    trained_in_chunk = dict.fromkeys(peers, 0)
    ledger = WeightLedger()
    view = budgets(*(info(p, 0, 0) for p in peers))  # fetched before anyone leased: the worst lag
    per_round = TARGET_BATCH // len(peers)
    for round_index in range(200):
        caps = ledger.caps(peers, view, now=NOW)
        for peer in peers:
            assert caps[peer] >= per_round, (round_index, peer, caps[peer])  # never cut
            ledger.charge(peer, per_round)
            trained_in_chunk[peer] += per_round
            while trained_in_chunk[peer] >= CHUNK:  # report a chunk, lease the next one
                trained_in_chunk[peer] -= CHUNK
                credited[peer] += CHUNK
        if round_index % 2:  # a heartbeat every other round
            view = budgets(*(info(p, credited[p], leased[p]) for p in peers))
    assert all(ledger.accepted[p] == 200 * per_round for p in peers)


def test_stale_or_missing_budgets_fall_back_to_the_per_round_caps():
    ledger = WeightLedger()
    assert ledger.caps(["p"], None, now=NOW) is None
    view = budgets(info("p", 0, 0), fetched_at=NOW - 100)  # 4 heartbeats of 10 s: stale after 40 s
    assert not view.fresh(now=NOW) and ledger.caps(["p"], view, now=NOW) is None
    assert budgets(info("p", 0, 0), fetched_at=NOW - 30).fresh(now=NOW)


def test_ledger_ignores_junk_and_stays_bounded():
    ledger = WeightLedger(max_peers=2)
    for weight in (math.nan, -1.0, 0.0, math.inf):
        ledger.charge("a", weight)
    assert ledger.accepted == {}
    for peer in ("a", "b", "c"):
        ledger.charge(peer, 1.0)
    assert set(ledger.accepted) == {"a", "b"}
    with pytest.raises(ValueError, match="slack"):
        WeightBudgets(slack=-1)
    with pytest.raises(ValueError, match="valid_s"):
        WeightBudgets(valid_s=0)


def test_budgets_travel_to_the_averager_process_in_a_file(tmp_path):
    path = tmp_path / "weight-budgets.json"
    reader = BudgetFile(path)
    assert reader.load() is None  # nothing written yet: per-round caps only
    write_budgets(path, budgets(info("p", 64, 128)))
    assert reader.load().allowance_of("p") == 64 + 128 + TARGET_BATCH
    write_budgets(path, budgets(info("p", 128, 64), fetched_at=NOW + 1))
    assert reader.load().fetched_at == NOW + 1  # re-read once it changed
    path.write_text("{not json")
    assert reader.load() is None
