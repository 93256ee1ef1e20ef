"""Two hosts, and beta's firewall drops every new TCP connection but its gRPC port's: `main.py ROLE`.

alpha (rank 0) reaches beta over gRPC once the plain TCP path times out, and prints how it got
there, a call's result and whether a backward through beta gave single-process torch's gradient.
"""

import json
import sys

import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.runtime import current


def main():
    role = sys.argv[1]
    rpc.init_rpc(role, rank={"alpha": 0, "beta": 1}[role], world_size=2)
    if role == "alpha":
        x = torch.randn(5, dtype=torch.float64, requires_grad=True)
        with dist_autograd.context() as context_id:
            y = rpc.rpc_sync("beta", torch.sin, args=(x,))
            dist_autograd.backward(context_id, [y.sum()])
            grad = dist_autograd.get_gradients(context_id)[x]
        agent = current.get()
        wire = agent.peers.to(agent.world.resolve("beta").id).transport.kind
        print(json.dumps({"wire": wire, "exact": torch.equal(grad, torch.cos(x.detach())),
                          "sum": rpc.rpc_sync("beta", torch.add, args=(torch.ones(2), 1)).tolist()}), flush=True)
    rpc.shutdown()


if __name__ == "__main__":
    main()
