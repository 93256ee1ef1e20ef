"""A spy on a backward pass's control messages: what the root asks holders (Reach) and what every
agent in this process notifies, let through to the real code."""

from distautograd.runtime.peers import Peers
from distautograd.runtime.reach import Reach
from distautograd.transport.link import as_protobuf


class Spy:
    """``asked``: (rank, how many send points) per Reach question; ``sent``: (sender's name, rank,
    request kind) per notification; ``push_roots``: the root each push names; ``push_plans``: whether
    each push carries the plan."""

    def __init__(self, monkeypatch):
        self.asked, self.sent, self.push_roots, self.push_plans = [], [], [], []
        ask, notify = Reach._reach, Peers.notify

        def asking(reach, context_id, rank, ids):
            self.asked.append((rank, len(ids)))
            return ask(reach, context_id, rank, ids)

        def notifying(peers, rank, request, *args, **kwargs):
            message = as_protobuf(request)  # the core may have serialized a push
            self.sent.append((peers.name, rank, message.WhichOneof("body")))
            if message.WhichOneof("body") == "push_gradients":
                self.push_roots.append(message.push_gradients.root)
                self.push_plans.append(message.push_gradients.HasField("plan"))
            return notify(peers, rank, request, *args, **kwargs)

        monkeypatch.setattr(Reach, "_reach", asking)
        monkeypatch.setattr(Peers, "notify", notifying)
