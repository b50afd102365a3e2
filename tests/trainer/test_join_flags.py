"""What a volunteer's `swarm train` settles before any model download: memory flags this machine cannot honour are
refused with what to do instead, the peer's name survives container restarts, and bf16 falls back to fp16 on GPUs
without it (issue 12)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from swarm_launcher.cli import UsageError, build_parser

pytestmark = pytest.mark.timeout(60)


def _options(tmp_path, *argv):
    from swarm_trainer.cli import options_from_args

    args = build_parser().parse_args(["train", "--coordinator", "h:1", "--token", "t", "--output-dir",
                                      str(tmp_path / "run"), *argv])
    return options_from_args(args)


def test_xformers_is_checked_when_flags_are_parsed(tmp_path):
    if importlib.util.find_spec("xformers") is not None:
        assert _options(tmp_path, "--xformers").features.xformers
        return
    with pytest.raises(UsageError, match="--xformers needs the xformers package"):
        _options(tmp_path, "--xformers")


def test_8bit_adam_with_optimizer_offload_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(UsageError, match="--no-offload-optimizer"):
        _options(tmp_path, "--use-8bit-adam")
    options = _options(tmp_path, "--use-8bit-adam", "--no-offload-optimizer")
    assert options.features.use_8bit_adam and not options.swarm.offload_optimizer


def test_default_peer_name_is_saved_and_kept_across_restarts(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "3f2a9c81d0e4")  # a container id: new every `docker run`
    first = _options(tmp_path).name
    assert first.startswith("peer-") and (tmp_path / "run" / "peer-name").read_text().strip() == first
    monkeypatch.setattr(socket, "gethostname", lambda: "77aa00bb11cc")  # the next container
    assert _options(tmp_path).name == first
    assert _options(tmp_path, "--name", "alice-4090").name == "alice-4090"  # --name always wins


def test_default_peer_name_rule():
    from swarm_trainer.options import default_peer_name

    assert default_peer_name("gpu-box", None, "abc123") == "gpu-box"
    assert default_peer_name("0123456789ab", None, "abc123") == "peer-abc123"
    assert default_peer_name("", None, "abc123") == "peer-abc123"
    assert default_peer_name("0123456789ab", "peer-old\n", "abc123") == "peer-old"


def test_bf16_falls_back_to_fp16_on_gpus_without_it():
    from swarm_trainer.options import cuda_bf16_supported, default_precision

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert default_precision(None, cuda, bf16_supported=True) == "bf16"
    assert default_precision(None, cuda, bf16_supported=False) == "fp16"
    assert default_precision("bf16", cuda, bf16_supported=False) == "fp16"
    assert default_precision("fp32", cuda, bf16_supported=False) == "fp32"
    assert default_precision(None, cpu, bf16_supported=False) == "fp32"
    assert default_precision("bf16", cpu, bf16_supported=False) == "bf16"  # CPU autocast does bf16 itself
    assert cuda_bf16_supported(cpu)
