"""The pure arithmetic of bench/wan.py: link scaling to SD 1.5's ratio, the training window, counters, tbf."""
from __future__ import annotations

import pytest

from bench._wan_figures import (
    control_bytes_per_s,
    interpolate,
    scale_arithmetic,
    scaled_link_rate,
    sd_ratio,
    training_window,
)
from bench._wan_net import bytes_between, tbf_args
from bench._wan_poll import parse_trainer_metrics


def test_sd15_ratio_and_the_scaled_link_keep_it():
    # 1.72 GB at 100 Mbit/s is 137.6 s, over a 0.5 s step: 275.2 steps per fp16 gradient.
    assert sd_ratio() == pytest.approx(275.2)
    rate = scaled_link_rate(params=1_427_012, step_s=0.8)
    assert (1_427_012 * 2 / rate) / 0.8 == pytest.approx(sd_ratio())
    scale = scale_arithmetic(params=1_427_012, step_s=0.8, batch_size=2, control_allowance=1000.0)
    assert scale["bench"]["check_ratio"] == pytest.approx(275.2)
    assert scale["bench"]["payload_bits_per_s"] == round(rate * 8)
    assert scale["bench"]["link_bytes_per_s"] == pytest.approx(rate + 1000.0, abs=0.1)
    with pytest.raises(ValueError):
        scaled_link_rate(params=0, step_s=1.0)


def test_control_allowance_is_what_one_solo_peer_sends_per_second():
    solo = {"bytes_per_sample_training_window": 1000.0, "per_peer_samples_per_s": 3.0}
    # 1000 bytes (sent + received, all peers) per sample, 3 samples/s per peer: 3000 B/s per peer, 1500 each way.
    assert control_bytes_per_s(solo) == pytest.approx(1500.0)


def test_training_window_runs_from_every_peer_training_to_95_percent_of_the_budget():
    def poll(t, *samples):
        return {"t": t, "trainers": [None if s is None else {"samples": s} for s in samples]}

    progress = [poll(0.0, None, None), poll(1.0, 4.0, 0.0), poll(2.0, 8.0, 2.0), poll(6.0, 50.0, 50.0),
                poll(7.0, 54.0, 56.0), poll(9.0, 56.0, 56.0)]
    assert training_window(progress, peers=2, budget=112) == (2.0, 7.0, 10.0, 110.0)
    with pytest.raises(ValueError):
        training_window([poll(0.0, None, None)], peers=2, budget=112)


def test_interpolate_is_linear_between_readings_and_clamped_outside():
    readings = [(0.0, 0.0), (10.0, 100.0), (20.0, 100.0)]
    assert interpolate(readings, 5.0) == pytest.approx(50.0)
    assert interpolate(readings, -1.0) == 0.0 and interpolate(readings, 25.0) == 100.0


def test_bytes_between_adds_sent_and_received_of_every_peer_on_one_link():
    before = [{"wan": {"tx": 10, "rx": 20}, "svc": {"tx": 0, "rx": 0}}] * 2
    after = [{"wan": {"tx": 110, "rx": 70}, "svc": {"tx": 5, "rx": 5}}, {"wan": {"tx": 10, "rx": 20},
                                                                        "svc": {"tx": 0, "rx": 0}}]
    assert bytes_between(before, after, "wan") == 150
    assert bytes_between(before, after, "svc") == 10


def test_tbf_gets_the_rate_in_bits_and_a_bucket_of_at_least_two_mtus():
    args = tbf_args(10_000)
    assert args[:3] == ["tbf", "rate", "80000bit"]
    assert int(args[args.index("burst") + 1]) >= 3000


def test_trainer_metrics_parsing_reads_samples_and_counted_bytes():
    text = ('# HELP x\nswarm_trainer_samples_trained_total 42.0\n'
            'swarm_trainer_network_bytes_total{direction="sent"} 1.5e+06\n'
            'swarm_trainer_network_bytes_total{direction="received"} 1000.0\nswarm_trainer_loss 0.1\n')
    assert parse_trainer_metrics(text) == {"samples": 42.0, "sent": 1.5e6, "received": 1000.0}
