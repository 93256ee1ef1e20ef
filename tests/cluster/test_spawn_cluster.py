"""Processes started with torch.multiprocessing.spawn + init_rpc (and process groups), as users start training scripts."""

import time

import pytest

from tests.helpers import spawned
from tests.helpers.processes import run_spawned


def test_every_verb_between_three_spawned_processes():
    run_spawned(spawned.every_verb)


def test_graceful_shutdown_waits_for_everyone_and_serves_late_calls():
    start = time.monotonic()
    run_spawned(spawned.graceful_shutdown_serves_late_calls, nprocs=2)
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("program", [spawned.process_group_then_rpc_on_one_port,
                                     spawned.process_group_then_rpc_on_one_tcp_address])
def test_a_process_group_and_rpc_share_one_address_as_in_torch(program):
    run_spawned(program, nprocs=2)


def test_file_init_method_needs_no_master_address_and_can_be_used_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTAUTOGRAD_TEST_TMP", str(tmp_path))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    run_spawned(spawned.rpc_through_a_file, nprocs=3)


def test_ddp_inside_a_distributed_context_averages_over_the_group_as_torch_does():
    run_spawned(spawned.ddp_inside_a_distributed_context, nprocs=2)


def test_all_gather_and_wait_all_workers_across_the_world():
    run_spawned(spawned.collectives_of_torchs_private_api, nprocs=3)
