"""engine/order.py on its own: each thread's nodes get places in one worker-wide creation order.

Every test runs in a thread of its own, so its counter (torch's at::sequence_number) and its
ranges start fresh; nodes are compared by the numbers ``_sequence_nr`` reports."""

import threading

import torch

from distautograd.engine import order


def _in_thread(body):
    """Runs ``body`` in a new thread and returns what it returned (or raises what it raised)."""
    out = {}

    def run():
        try:
            out["value"] = body()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _graph_nodes(root):
    """Every node reachable from ``root`` but AccumulateGrad (which keeps torch's own number)."""
    seen, stack = [], [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        stack.extend(child for child, _ in node.next_functions)
    return [n for n in seen if type(n).__name__ != "AccumulateGrad"]


def _leaf():
    return torch.ones(2, requires_grad=True)


def test_a_threads_first_nodes_are_placed_in_their_order_and_the_key_sorts_right_after_them():
    def body():
        x = _leaf()
        a = x * 2  # own number 0 in this fresh thread
        b = a.exp()
        key = order.place([b.grad_fn])
        return a.grad_fn._sequence_nr(), b.grad_fn._sequence_nr(), key

    a, b, key = _in_thread(body)
    assert order.BASE <= a < b
    assert b + 1 == key + 0.5  # right after the last node placed, before any node placed later
    assert key == int(key) + 0.5


def test_a_later_range_starts_right_after_everything_placed_before_it():
    def body():
        x = _leaf()
        first = (x * 2).exp()
        order.place([first.grad_fn])
        second = (x * 3).sin()  # this thread's counter is past the first range now
        key = order.place([second.grad_fn])
        return first.grad_fn._sequence_nr(), second.grad_fn.next_functions[0][0]._sequence_nr(), \
            second.grad_fn._sequence_nr(), key

    first, mul, sin, key = _in_thread(body)
    assert first < mul < sin and sin + 0.5 == key
    assert mul == sin - 1  # the range's nodes keep their own spacing: no gap inside it


def test_every_node_of_a_graph_with_shared_parts_and_many_leaves_is_placed():
    def body():
        leaves = [_leaf() for _ in range(4)]
        shared = leaves[0] * leaves[1]
        z = shared.exp() + shared.sin() + (leaves[2] * 3) + (leaves[3] / 2) + shared
        # shared * shared names one node twice: it is on the stack twice before it is first visited,
        # and the branch pushed before it (the cos) must still be visited after its second copy.
        twice = (leaves[2] * 5).cos() + shared * shared
        order.place([z.grad_fn, twice.grad_fn])
        return [node._sequence_nr() for root in (z, twice) for node in _graph_nodes(root.grad_fn)]

    numbers = _in_thread(body)
    assert len(numbers) >= 8 and all(n >= order.BASE for n in numbers), numbers


def test_nodes_placed_already_are_passed_over_and_what_is_below_the_new_ones_still_placed():
    def body():
        x, y = _leaf(), _leaf()
        old = (x * 2).exp()
        order.place([old.grad_fn])
        before = old.grad_fn._sequence_nr()
        for z in (old + (y * 3).sin(), (y * 4).cos() + old):  # the placed part on either side
            order.place([z.grad_fn])
            assert all(n._sequence_nr() >= order.BASE for n in _graph_nodes(z.grad_fn))
        return before, old.grad_fn._sequence_nr()

    before, after = _in_thread(body)
    assert before == after  # a place, once given, stays


def test_another_threads_nodes_are_left_to_that_thread():
    made = {}

    def other():
        x = _leaf()
        t = x
        for _ in range(8):  # own numbers 0..7 on that thread
            t = t * 2
        made["tensor"] = t
        nodes = []
        node = t.grad_fn
        while node is not None and type(node).__name__ != "AccumulateGrad":
            nodes.append(node)
            node = node.next_functions[0][0]
        return nodes

    nodes = _in_thread(other)

    def body():
        x = _leaf()
        mine = x
        for _ in range(5):  # own numbers 0..4 here: a range [0, 5)
            mine = mine * 3
        order.seal()
        numbers = sorted(n._sequence_nr() for n in nodes)
        assert numbers == list(range(8))  # not placed by the thread that made them, so far
        order.place(nodes)  # numbers 5..7 lie past this thread's range; 0..4 are another thread's too
        return [n._sequence_nr() for n in nodes]

    after = _in_thread(body)
    # This thread cannot tell its own numbers from another's below its mark: the ones past it it
    # leaves (a place it gave them would be wrong).
    assert sorted(n for n in after if n < order.BASE) == [5, 6, 7]


def test_place_tensors_finds_the_nodes_inside_lists_tuples_and_dicts():
    def body():
        x = _leaf()
        a, b, c = x * 2, x * 3, x * 4
        untracked = torch.zeros(2)
        order.place_tensors({"first": [a, (b, untracked)], "second": c, "other": "text"})
        return [t.grad_fn._sequence_nr() for t in (a, b, c)]

    assert all(n >= order.BASE for n in _in_thread(body))


def test_a_thread_remembers_its_last_ranges_and_leaves_older_nodes_their_own_numbers():
    def body(ranges_after):
        x = _leaf()
        oldest = x * 2
        order.seal()
        for _ in range(ranges_after):  # a range each
            x * 3
            order.seal()
        for _ in range(2000):  # seals with nothing new make no range
            order.seal()
        recent = x * 5
        order.place([oldest.grad_fn, recent.grad_fn])
        return oldest.grad_fn._sequence_nr(), recent.grad_fn._sequence_nr()

    remembered, recent = _in_thread(lambda: body(order._HISTORY - 2))  # with recent's: _HISTORY ranges
    assert remembered >= order.BASE and recent >= order.BASE
    forgotten, recent = _in_thread(lambda: body(order._HISTORY - 1))  # one more: the oldest half is dropped
    assert forgotten < order.BASE and recent >= order.BASE
