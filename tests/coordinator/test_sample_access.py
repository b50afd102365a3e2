"""The pure rules behind AuthorizeSamples (issue 13 item 3); end to end: tests/dataset/test_stream_leases.py."""
from __future__ import annotations

import pytest

from swarm_coordinator import rules


def test_unleased_samples_are_those_in_no_active_lease_in_the_order_asked():
    assert rules.unleased_samples([5, 1, 9, 2], [[1, 2], [3]]) == [5, 9]
    assert rules.unleased_samples([1, 2, 3], [[3, 1], [2]]) == []
    assert rules.unleased_samples([1], []) == [1]


def test_the_refusal_names_at_most_ten_samples_and_says_what_to_do():
    message = rules.describe_unleased(list(range(1, 14)))
    assert message.startswith("sample(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 3 more are not leased to this join token")
    assert "LeaseChunks" in message


@pytest.mark.parametrize("ids, words", [([], "empty"), (list(range(10_001)), "at most 10000")])
def test_sample_id_lists_are_checked(ids, words):
    with pytest.raises(rules.InvalidRequest, match=words):
        rules.check_sample_ids(ids)
