"""The coordinator's settings refuse what cannot run; its servicer is composed of parts covering every RPC once."""
from __future__ import annotations

import pytest

from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.servicers import ConfigRpcs, LeaseRpcs, PeerRpcs, ProgressRpcs, SampleAccessRpcs, compose
from swarm_coordinator.settings import CoordinatorSettings
from swarm_coordinator.upkeep import Upkeep

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("changes, words", [
    ({"run_id": "bad run id"}, "run id"),
    ({"listen": "nonsense"}, "listen 'nonsense' is not HOST:PORT"),
    ({"dataset": "host:99999"}, "dataset"),
    ({"lease_ttl": 0}, "lease_ttl must be > 0"),
    ({"max_workers": 0}, "grpc workers must be between 1 and 256"),
    ({"metrics_port": 70000}, "metrics port"),
    ({"dataset_public_address": "data:50052"}, "needs the dataset address"),
    ({"synchronous": "off"}, "normal or full"),
])
def test_settings_refuse_what_cannot_run(changes, words):
    with pytest.raises(ValueError, match=words):
        CoordinatorSettings(**changes)


def test_settings_defaults_are_the_commands_defaults():
    settings = CoordinatorSettings(bootstrap_peers=["/ip4/1.2.3.4/tcp/1/p2p/x"])
    assert settings.listen == "0.0.0.0:50051" and settings.metrics_port == 9100 and settings.lease_ttl == 1200.0
    assert settings.bootstrap_peers == ("/ip4/1.2.3.4/tcp/1/p2p/x",)  # a tuple: settings are immutable
    assert settings.replace(lease_ttl=5.0).lease_ttl == 5.0


def test_compose_answers_every_rpc_with_exactly_one_part(open_store, db_path, tmp_path):
    from swarm_coordinator.admission import AdmissionRpcs
    from swarm_coordinator.reachability import ReachabilityRpcs

    store = open_store()
    admission = AdmissionRpcs(db_path=db_path, signing_key_path=str(tmp_path / "signing.key"), run_id="test-run")
    parts = [PeerRpcs(store), ConfigRpcs(store), LeaseRpcs(store), ProgressRpcs(store), admission,
             SampleAccessRpcs(store), ReachabilityRpcs(store)]
    servicer = compose(parts)
    for method in pb.DESCRIPTOR.services_by_name["Coordinator"].methods:
        assert getattr(servicer, method.name).__self__ in parts
    with pytest.raises(ValueError, match="RPC GetProgress must be answered by exactly one servicer part, got no part"):
        compose([*parts[:3], admission, *parts[5:]])
    with pytest.raises(ValueError, match="RPC GetConfig .* got ConfigRpcs, ConfigRpcs"):
        compose([*parts, ConfigRpcs(store)])


def test_upkeep_runs_every_task_and_survives_a_failing_one():
    ran = []

    def broken():
        ran.append("broken")
        raise RuntimeError("boom")

    upkeep = Upkeep([("broken", broken), ("fine", lambda: ran.append("fine"))], interval=1.0)
    upkeep.run_once()
    upkeep.run_once()
    assert ran == ["broken", "fine", "broken", "fine"]
    with pytest.raises(ValueError):
        Upkeep([], interval=0)
