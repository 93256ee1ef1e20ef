"""A pipeline on four hosts that keeps training through network faults: `main.py ROLE CONTROL_DIR`.

Roles: coordinator (rank 0, hosts the coordinator), trainer (rank 1), worker1 and worker2 (ranks 2
and 3, each holding one stage as an RRef). The trainer steps until CONTROL_DIR/stop exists (the
others stay until it writes CONTROL_DIR/done), printing one JSON line per step (and, when CONTROL_DIR/report appears, what contexts and passes the
workers still hold): whether it succeeded, how long it took, its error, and whether its loss
equals, bit for bit, that of a replica of the model trained in this one process (only successful
steps move the replica). A model that was lost, reset or half-updated shows as ``equal: false``.
A stage whose worker died is made again on the other worker (fresh, and its replica with it), so
the survivors keep training. Settings come from the environment (see tests/deploy/test_partition.py).
"""

import json
import logging
import os
import sys
import time

import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.optim import DistributedOptimizer
from distautograd.runtime import current

RANKS = {"coordinator": 0, "trainer": 1, "worker1": 2, "worker2": 3}
WIDTH = 8


class Stage(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(WIDTH, WIDTH, dtype=torch.float64)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def run_stage(stage, x):
    return stage.local_value()(x)


def state_of(stage):
    return stage.local_value().state_dict()


def parameters_of(stage):
    return [rpc.RRef(p) for p in stage.local_value().parameters()]


def autograd_state():
    """Contexts and passes this worker still holds (both 0 once everything is released)."""
    return current.get().autograd_debug_info()


def departures():
    """The deaths and leavings this process heard of: [(name, reason)]."""
    world = current.get().world
    return [(d.name, d.reason) for d in (world.departure(rank) for rank in RANKS.values()) if d is not None]


class Pipeline:
    def __init__(self):
        self.homes = {"stage1": "worker1", "stage2": "worker2"}
        self.seeds = {"stage1": 1, "stage2": 2}
        self.remote = {}
        self.local = {}
        self.stale = set()  # stages whose replica must be taken from the worker before the next step
        for name in self.homes:
            self.make(name)

    def make(self, name):
        self.seeds[name] += 100
        self.remote[name] = rpc.remote(self.homes[name], Stage, args=(self.seeds[name],))
        self.local[name] = Stage(self.seeds[name])
        self.stale.discard(name)
        self.optimizer = None  # made again (over the new parameters) before the next step

    def optimizer_for_step(self):
        if self.optimizer is None:
            params = [p for name in sorted(self.remote) for p in rpc.rpc_sync(self.homes[name], parameters_of,
                                                                              args=(self.remote[name],))]
            self.optimizer = DistributedOptimizer(torch.optim.SGD, params, lr=0.05)
            self.local_optimizer = torch.optim.SGD(
                [p for name in sorted(self.local) for p in self.local[name].parameters()], lr=0.05)
        return self.optimizer

    def step(self, x):
        if self.stale:
            self.resync()
        optimizer = self.optimizer_for_step()
        with dist_autograd.context() as context_id:
            h = rpc.rpc_sync(self.homes["stage1"], run_stage, args=(self.remote["stage1"], x))
            out = rpc.rpc_sync(self.homes["stage2"], run_stage, args=(self.remote["stage2"], h))
            loss = (out * out).sum()
            dist_autograd.backward(context_id, [loss])
            try:
                optimizer.step(context_id)
            except Exception:
                # Not atomic (torch's is not either): one stage may have stepped and the other not. The
                # replica takes the parameters that are there, so later steps can be compared again.
                self.stale.update(self.remote)
                raise
        self.local_optimizer.zero_grad()
        local_loss = (self.local["stage2"](self.local["stage1"](x)) ** 2).sum()
        local_loss.backward()
        self.local_optimizer.step()
        return torch.equal(loss.detach(), local_loss.detach())

    def resync(self):
        """The replica takes each stage's parameters from its worker; a stage whose worker cannot be
        reached now is taken before the next step (which fails until it can be)."""
        self.stale.update(self.remote)
        for name in sorted(self.stale):
            there = rpc.rpc_sync(self.homes[name], state_of, args=(self.remote[name],), timeout=30)
            self.local[name].load_state_dict(there)
            self.stale.discard(name)
            print(json.dumps({"resynced": name}), flush=True)

    def rebuild_on_survivor(self, dead):
        """Every stage that lived on ``dead`` is made again on the other worker."""
        survivor = "worker1" if dead == "worker2" else "worker2"
        for name, home in self.homes.items():
            if home == dead:
                self.homes[name] = survivor
                self.make(name)
        print(json.dumps({"rebuilt": dead, "on": survivor}), flush=True)


def workers_state():
    state = {}
    for worker in ("worker1", "worker2"):
        try:
            state[worker] = rpc.rpc_sync(worker, autograd_state, timeout=5)
        except Exception as exc:  # noqa: BLE001 - a dead worker says so
            state[worker] = str(exc)[:200]
    return state


def train(control):
    pipeline = Pipeline()
    x = torch.randn(4, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    step = 0
    while not os.path.exists(os.path.join(control, "stop")):
        if os.path.exists(os.path.join(control, "report")):  # between steps: no context of ours is open
            time.sleep(0.5)
            print(json.dumps({"report": workers_state()}), flush=True)
            os.remove(os.path.join(control, "report"))
        began = time.monotonic()
        record = {"step": step, "t": time.time()}
        try:
            record["equal"] = pipeline.step(x)
            record["ok"] = True
        except Exception as exc:  # noqa: BLE001 - every failure is reported, and training goes on
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:400])
            for worker in ("worker1", "worker2"):
                if f"worker '{worker}'" in str(exc) and " died" in str(exc):
                    pipeline.rebuild_on_survivor(worker)
        record["seconds"] = round(time.monotonic() - began, 3)
        print(json.dumps(record), flush=True)
        step += 1
        time.sleep(0.05)
    time.sleep(2.0)  # releases still on their way
    print(json.dumps({"final": workers_state(), "departures": departures(), "homes": pipeline.homes}), flush=True)
    open(os.path.join(control, "done"), "w").close()  # the others may go now


def main():
    role, control = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {role} %(levelname)s %(message)s")
    rpc.init_rpc(role, rank=RANKS[role], world_size=len(RANKS))
    print(f"{role} initialized", flush=True)
    if role == "trainer":
        train(control)
    else:
        while not os.path.exists(os.path.join(control, "done")):
            time.sleep(0.2)
    if role == "coordinator":
        print(json.dumps({"departures": departures()}), flush=True)
    rpc.shutdown(graceful=False)
    print(f"{role} done", flush=True)


if __name__ == "__main__":
    main()
