"""The shared command-line validators: numbers, ports and addresses are read one way by every command."""
from __future__ import annotations

import argparse

import pytest

from swarm import cliargs
from swarm.runconfig import yaml_float


@pytest.mark.parametrize("text, expected", [("1", 1.0), ("0.5", 0.5), ("1e-3", 0.001)])
def test_positive_float_reads_numbers(text, expected):
    assert cliargs.positive_float_arg(text) == expected


@pytest.mark.parametrize("text, message", [("0", "must be > 0"), ("-2", "must be > 0"), ("abc", "must be a number"),
                                           ("nan", "finite"), ("inf", "finite"), ("", "must be a number")])
def test_positive_float_refuses_with_a_reason(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        cliargs.positive_float_arg(text)


@pytest.mark.parametrize("text, message", [("0", ">= 1"), ("1.5", "whole number"), ("x", "whole number")])
def test_positive_int_refuses_with_a_reason(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        cliargs.positive_int_arg(text)
    assert cliargs.positive_int_arg("7") == 7


def test_int_range():
    batch = cliargs.int_range_arg(1, 4096)
    assert batch("1") == 1 and batch("4096") == 4096
    for bad in ("0", "4097", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            batch(bad)


@pytest.mark.parametrize("text, ok", [("0", True), ("65535", True), ("9100", True), ("65536", False), ("-1", False),
                                      ("http", False), ("80.5", False)])
def test_port_arg(text, ok):
    if ok:
        assert cliargs.port_arg(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="port"):
            cliargs.port_arg(text)


def test_check_port_names_the_flag():
    assert cliargs.check_port(0, name="--metrics-port") == 0
    for bad in (70000, -1, True, "80"):
        with pytest.raises(ValueError, match="--metrics-port must be a port between 0 and 65535"):
            cliargs.check_port(bad, name="--metrics-port")


@pytest.mark.parametrize("text, expected", [("localhost:50051", ("localhost", 50051)), ("0.0.0.0:0", ("0.0.0.0", 0)),
                                            ("[::1]:80", ("[::1]", 80))])
def test_split_address(text, expected):
    assert cliargs.split_address(text) == expected
    assert cliargs.is_address(text) and cliargs.address_arg(text) == text


@pytest.mark.parametrize("text", ["localhost", ":50051", "host:", "host:port", "host:70000", "host:-1"])
def test_bad_addresses(text):
    assert not cliargs.is_address(text)
    with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
        cliargs.address_arg(text)


def test_argparse_reports_the_flag_and_the_reason(capsys):
    parser = argparse.ArgumentParser(prog="swarm x")
    parser.add_argument("--lease-ttl", type=cliargs.positive_float_arg)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lease-ttl", "soon"])
    assert "argument --lease-ttl: must be a number, got 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [("1e-4", 1e-4), ("5", 5.0), (0.5, 0.5), (3, 3), ("fast", "fast"),
                                             (None, None), (True, True)])
def test_yaml_float(value, expected):
    assert yaml_float(value) == expected and type(yaml_float(value)) is type(expected)
