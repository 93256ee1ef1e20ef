"""A connection the network cut is unreachable and one its peer reset is lost, whichever call the
kernel told: the reading thread, or a sender that was told only EPIPE (the partition test's coordinator
once called a partitioned worker dead this way)."""

import subprocess
import sys

import pytest

from distautograd import netns
from tests.helpers.programs import NEEDS_IPTABLES

REASON = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]
ROUNDS = 3


def rounds(how: str) -> list:
    with netns.Network(["solo"]) as network:
        run = subprocess.run(network.command("solo", [sys.executable, "-m", "tests.helpers.ending_race", how,
                                                      str(ROUNDS)]), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == ROUNDS, run.stdout
    return lines


@NEEDS_IPTABLES
def test_a_cut_connection_is_unreachable_though_a_sender_saw_epipe_first():
    for line in rounds("cut"):
        assert line.startswith("Unreachable: peer is unreachable: its connection timed out"), line


def test_a_reset_connection_is_lost_though_a_sender_saw_epipe_first():
    for line in rounds("reset"):
        assert line.startswith("Unavailable: connection to peer lost:") and "reset" in line, line
