"""What a worker does with the coordinator's notices: never applies its own death to itself, nor an
older life's death to the process that holds its rank now; a real departure releases as before."""

from __future__ import annotations

import time

import pytest
import torch

from distautograd.protocol.v1 import messages_pb2 as pb
from tests.helpers.inprocess import AGENTS, World

TTL = 0.3  # contexts of a departed creator are released after this


@pytest.fixture
def world():
    world = World(["m0", "m1", "m2"], context_ttl=TTL)
    yield world
    world.close()


def _notice(agent, departed):
    """A snapshot newer than the agent's, without the departed, naming them departed."""
    gone = {d.rank for d in departed}
    return pb.WorldUpdate(version=agent.world.version + 1, departed=departed,
                          workers=[w for w in agent.world.members() if w.rank not in gone])


def _contexts_after_ttl(agent, context_ids):
    time.sleep(TTL * 3)
    return [c for c in context_ids if c in agent.contexts.ids()]


def test_a_notice_of_its_own_death_is_not_applied_to_itself(world):
    m1 = AGENTS["m1"]
    ctx = m1.contexts.detached()  # minted by m1: a departure of rank 1 would release it
    m1.notices.handle_world_update(None, _notice(m1, [pb.Departure(
        name="m1", rank=m1.rank, reason="no heartbeat for 3 s", failed=True, incarnation=m1.incarnation)]), [])
    assert _contexts_after_ttl(m1, [ctx.id]) == [ctx.id]


def test_the_death_of_an_earlier_life_spares_the_process_that_holds_the_rank_now(world):
    m0, m2 = AGENTS["m0"], AGENTS["m2"]
    ctx = m0.contexts.for_incoming(m2.contexts.detached().id, m2.rank)  # m0 holds a context m2 created
    ctx.sent_to(m2.rank)  # and called in it: only a release ends it (an idle empty one would go by itself)
    earlier = pb.Departure(name="m2", rank=m2.rank, reason="replaced by a new process", failed=True,
                           incarnation=m2.incarnation - 1)
    update = _notice(m0, [])
    update.departed.append(earlier)  # m2 (this life) is still a member
    m0.notices.handle_world_update(None, update, [])
    assert _contexts_after_ttl(m0, [ctx.id]) == [ctx.id]
    current = pb.Departure(name="m2", rank=m2.rank, reason="stopped", failed=False, incarnation=m2.incarnation)
    m0.notices.handle_world_update(None, _notice(m0, [earlier, current]), [])  # now this life: released by the TTL
    assert _contexts_after_ttl(m0, [ctx.id]) == []


def test_contexts_whose_release_was_lost_in_a_silence_are_released_when_the_creator_answers(world, monkeypatch):
    from distautograd import errors
    from distautograd.runtime import reconcile
    from tests.helpers.inprocess import call, context

    monkeypatch.setattr(reconcile, "ASK_EVERY", 0.1)
    m0, m1 = AGENTS["m0"], AGENTS["m1"]
    notify = m0.contexts._notify
    monkeypatch.setattr(m0.contexts, "_notify", lambda rank, request: None)  # the release is lost
    grad_input = torch.ones(1, requires_grad=True)  # a recv point: the contexts hold something on m1
    with context("m0") as lost:
        call("m0", "m1", torch.neg, grad_input)  # m1 now holds the context m0 created
    time.sleep(0.3)  # the release batch went (nowhere)
    monkeypatch.setattr(m0.contexts, "_notify", notify)
    with context("m0") as kept:
        call("m0", "m1", torch.neg, grad_input)
        assert {kept.id, lost.id} <= set(m1.contexts.ids())
        m1.reconciler.on_lost(m0.rank, errors.Unreachable("worker 'm0' (rank 0) is unreachable: timed out"))
        deadline = time.monotonic() + 5
        while lost.id in m1.contexts.ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost.id not in m1.contexts.ids()  # m0 said it was closed
        assert kept.id in m1.contexts.ids()  # still open on m0: kept


def test_a_brought_context_that_holds_nothing_goes_when_idle_one_that_holds_something_stays(world):
    m0, m1 = AGENTS["m0"], AGENTS["m1"]
    empty = m0.contexts.for_incoming(m1.contexts.detached().id, m1.rank)
    used = m0.contexts.for_incoming(m1.contexts.detached().id, m1.rank)
    used.sent_to(m1.rank)  # a call was made in it here: only its creator's release ends it
    assert m0.contexts.brought.held(f"rank {m1.rank}") == 2
    assert _contexts_after_ttl(m0, [empty.id, used.id]) == [used.id]
    assert m0.contexts.brought.held(f"rank {m1.rank}") == 1
    again = m0.contexts.for_incoming(empty.id, m1.rank)  # its creator uses it again: made again, not refused
    assert again is not empty and again.id == empty.id


def test_a_context_under_a_rank_nobody_holds_is_refused_unless_the_sender_made_it(world):
    from distautograd import errors
    from distautograd.ids import IdMint

    m0 = AGENTS["m0"]
    with pytest.raises(errors.FailedPrecondition, match="names rank 4000 as its creator, which is no member"):
        m0.contexts.for_incoming(IdMint(4000)(), 1)
    joining = m0.contexts.for_incoming(IdMint(4001)(), 4001)  # a newcomer's call before its join was heard
    assert _contexts_after_ttl(m0, [joining.id]) == []  # it never became a member: released after the TTL
