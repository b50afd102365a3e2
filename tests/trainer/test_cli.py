"""`swarm train` flags: the contract other parts rely on, and clear errors for bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest

from swarm_launcher.cli import UsageError, build_parser

pytestmark = pytest.mark.timeout(60)


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_contract_flags_parse_into_options(tmp_path, monkeypatch):
    from swarm_trainer.cli import options_from_args

    monkeypatch.setenv("SWARM_TOKEN", "tok")
    args = _args("--coordinator", "127.0.0.1:5000", "--output-dir", str(tmp_path), "--name", "p", "--batch-size",
                 "2", "--device", "cpu", "--precision", "fp32", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
                 "--announce-maddrs", "/ip4/1.2.3.4/tcp/31337", "--client-mode", "--use-auto-relay",
                 "--matchmaking-time", "1", "--averaging-timeout", "5", "--load-state-timeout", "9",
                 "--compression", "8bit", "--barrier-timeout", "7", "--metrics-port", "0",
                 "--ready-file", str(tmp_path / "r.json"))
    options = options_from_args(args)
    assert options.token == "tok" and options.batch_size == 2 and options.barrier_timeout == 7
    swarm = options.swarm
    assert swarm.client_mode and swarm.use_auto_relay and swarm.use_relay
    assert swarm.host_maddrs == ("/ip4/127.0.0.1/tcp/0",) and swarm.announce_maddrs == ("/ip4/1.2.3.4/tcp/31337",)
    assert (swarm.matchmaking_time, swarm.averaging_timeout, swarm.load_state_timeout) == (1, 5, 9)
    assert swarm.compression == "8bit" and swarm.identity_path == str(tmp_path / "identity.key")


def test_defaults_work_over_the_internet(monkeypatch):
    from swarm_trainer.cli import options_from_args

    options = options_from_args(_args("--coordinator", "h:1", "--token", "t"))
    assert options.swarm.host_maddrs == ("/ip4/0.0.0.0/tcp/0",)
    assert 10 <= options.swarm.matchmaking_time <= 15 and 60 <= options.swarm.averaging_timeout <= 120
    assert options.swarm.compression == "fp16" and options.metrics_port == 9102 and options.batch_size == 1
    assert options.precision is None  # fp32 on CPU, bf16 on CUDA, chosen once the device is known


def test_missing_token_and_bad_values_are_refused(monkeypatch):
    from swarm_trainer.cli import options_from_args

    monkeypatch.delenv("SWARM_TOKEN", raising=False)
    with pytest.raises(UsageError, match="token"):
        options_from_args(_args("--coordinator", "h:1"))
    with pytest.raises(UsageError, match="multiaddr"):
        options_from_args(_args("--coordinator", "h:1", "--token", "t", "--host-maddrs", "0.0.0.0:5"))
    for bad in (["--coordinator", "nohost"], ["--coordinator", "h:1", "--batch-size", "0"],
                ["--coordinator", "h:1", "--matchmaking-time", "-1"], ["--coordinator", "h:1", "--compression", "x"]):
        with pytest.raises(SystemExit):
            _args(*bad)


def test_no_token_exits_2_with_a_message():
    result = subprocess.run([sys.executable, "-m", "swarm_launcher", "train", "--coordinator", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "SWARM_TOKEN" in result.stderr


def test_wandb_is_optional_and_asked_for_clearly(monkeypatch):
    import importlib.util

    from swarm_trainer.cli import options_from_args

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(UsageError, match="pip install wandb"):
        options_from_args(_args("--coordinator", "h:1", "--token", "t", "--wandb-project", "p"))
    assert options_from_args(_args("--coordinator", "h:1", "--token", "t")).wandb_project is None
