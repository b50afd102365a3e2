"""`swarm token`, `swarm config` and `swarm coordinator` argument checks, through the real CLI entry point."""
from __future__ import annotations

import pytest

from swarm_coordinator.tokens import TokenChecker, create_token, hash_token, list_tokens
from swarm_launcher.cli import main

pytestmark = pytest.mark.timeout(60)


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def existing_db(db_path):
    """A coordinator database as the coordinator creates it at its first start."""
    from swarm_coordinator import db

    db.open_engine(db_path).dispose()
    return db_path


def test_admin_commands_refuse_a_database_that_does_not_exist(capsys, tmp_path):
    missing = str(tmp_path / "typo" / "coordinator.sqlite")
    for argv in (("token", "create", "--db", missing), ("token", "list", "--db", missing),
                 ("token", "revoke", "--db", missing, "alice"), ("config", "show", "--db", missing)):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "no coordinator database at" in err, argv
    assert not (tmp_path / "typo").exists()


def test_token_create_list_revoke(capsys, existing_db):
    db_path = existing_db
    code, out, err = run(capsys, "token", "create", "--db", db_path, "--name", "alice")
    token = out.strip()
    assert code == 0 and token.startswith("swt_") and len(token) > 40 and "shown only this once" in err
    code, out, _ = run(capsys, "token", "list", "--db", db_path)
    assert code == 0 and "alice" in out and token[:10] in out and token not in out and "live" in out
    assert run(capsys, "token", "create", "--db", db_path)[1].strip() != token  # default name token-2
    assert [t.name for t in list_tokens(db_path)] == ["alice", "token-2"]

    code, out, _ = run(capsys, "token", "revoke", "--db", db_path, token[:12])
    assert code == 0 and "revoked 'alice'" in out
    code, _, err = run(capsys, "token", "revoke", "--db", db_path, "alice")
    assert code == 2 and "no live token" in err
    code, _, err = run(capsys, "token", "create", "--db", db_path, "--name", "../bad")
    assert code == 2 and "token name" in err


def test_tokens_are_stored_hashed_and_replace_revokes_the_old_one(db_path):
    import sqlite3

    old = create_token(db_path, name="host-internal", replace=True)
    new = create_token(db_path, name="host-internal", replace=True)
    with sqlite3.connect(db_path) as conn:
        stored = conn.execute("SELECT token_hash, revoked FROM tokens ORDER BY id").fetchall()
        dump = "\n".join(conn.iterdump())
    assert [h for h, _ in stored] == [hash_token(old), hash_token(new)]
    assert stored[0][1] is not None and stored[1][1] is None
    assert old not in dump and new not in dump


def test_token_checker_caches_good_tokens_only(db_path):
    from swarm_coordinator import db

    token = create_token(db_path, name="t")
    now = [0.0]
    checker = TokenChecker(db.make_engine(db_path, immediate=False), ttl=5.0, clock=lambda: now[0])
    assert checker(token) is None and checker("swt_unknown").startswith("invalid join token")
    assert checker(None).startswith("missing join token")
    from swarm_coordinator.tokens import revoke_tokens

    revoke_tokens(db_path, "t")
    assert checker(token) is None  # cached for 5 s
    now[0] = 5.1
    assert "was revoked" in checker(token)
    late = create_token(db_path, name="late")
    assert checker(late) is None  # new tokens work at once: misses are never cached


def test_config_show_and_set(capsys, existing_db, tmp_path):
    db_path = existing_db
    code, _, err = run(capsys, "config", "show", "--db", db_path)
    assert code == 2 and "no run config yet" in err
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("lr: 0.0002\nresolution: 512\nmax_data_epochs: 4\n")
    code, out, _ = run(capsys, "config", "set", "--db", db_path, "--file", str(run_yaml))
    assert code == 0 and "stored config version 1" in out
    code, out, _ = run(capsys, "config", "set", "--db", db_path, "--file", str(run_yaml))
    assert code == 0 and "unchanged" in out
    code, out, err = run(capsys, "config", "set", "--db", db_path, "lr=5e-5", "model=/models/sd15")
    assert code == 0 and "stored config version 2 (changed: lr, model)" in out
    assert "model cannot be applied to running peers" in err
    code, out, _ = run(capsys, "config", "show", "--db", db_path)
    assert code == 0 and "# config version 2" in out and "lr: 5.0e-05" in out and "max_data_epochs: 4" in out
    code, out, _ = run(capsys, "config", "show", "--db", db_path, "--version", "1")
    assert "lr: 0.0002" in out
    for bad, phrase in (("lr=-1", "lr must be > 0"), ("colour=red", "unknown run config key"),
                        ("lr", "is not KEY=VALUE"), ("resolution=500", "multiple of 64")):
        code, _, err = run(capsys, "config", "set", "--db", db_path, bad)
        assert code == 2 and phrase in err, (bad, err)
    code, _, err = run(capsys, "config", "show", "--db", db_path, "--version", "9")
    assert code == 2 and "does not exist (latest is 2)" in err


def test_coordinator_flags_are_checked_before_starting(capsys, db_path, tmp_path):
    for argv, phrase in (
        (["--run-id", "bad run id"], "run id"),
        (["--config", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--listen", "nonsense"], "argument --listen: must be HOST:PORT"),
        (["--dataset-public-address", "x:1"], "needs --dataset"),
        (["--grpc-workers", "0"], "--grpc-workers"),
    ):
        code, _, err = run(capsys, "coordinator", "--db", db_path, *argv)
        assert code == 2 and phrase in err, (argv, err)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr_scheduler: sawtooth\n")
    code, _, err = run(capsys, "coordinator", "--db", db_path, "--config", str(bad_yaml), "--listen",
                       "127.0.0.1:0", "--metrics-port", "0")
    assert code == 2 and "lr_scheduler must be one of" in err
    code, _, err = run(capsys, "coordinator", "--lease-ttl", "-5")
    assert code == 2 and "must be > 0" in err


def test_token_create_prints_the_join_lines_for_that_token(capsys, existing_db, monkeypatch):
    code, out, err = run(capsys, "token", "create", "--db", existing_db, "--name", "bob",
                         "--join-address", "swarm.example.org:50051", "--join-image", "reg.example.org/trainer:1")
    token = out.strip()
    assert code == 0 and token.startswith("swt_"), "stdout stays the bare token"
    lines = [line for line in err.splitlines() if line.startswith("docker run")]
    assert len(lines) == 2
    for line in lines:
        assert f"-e SWARM_TOKEN={token} reg.example.org/trainer:1 swarm train --coordinator swarm.example.org:50051" \
            in line and "--shm-size=8g" in line and "-v swarm-trainer:/data" in line
    assert "-p 31338:31338" in lines[0] and "--announce-maddrs /ip4/MY.PUBLIC.IP/tcp/31338" in lines[0]
    assert "--client-mode --use-auto-relay" in lines[1] and " -p " not in lines[1]
    # docker-compose.yml sets the address for the coordinator container, so `exec ... token create` prints them.
    monkeypatch.setenv("SWARM_PUBLIC_ADDRESS", "1.2.3.4:50051")
    code, _, err = run(capsys, "token", "create", "--db", existing_db, "--name", "carol")
    assert code == 0 and "--coordinator 1.2.3.4:50051" in err and "swarm-diffusion/trainer:0.1.0" in err
    code, _, err = run(capsys, "token", "create", "--db", existing_db, "--join-address", "no-port")
    assert code == 2
