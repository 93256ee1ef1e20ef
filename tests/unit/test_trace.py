"""A context's trace is taken only once the work still recording into it is done (views.trace)."""

import threading

from distautograd.views import trace


def test_take_waits_for_work_that_is_still_recording():
    context_id, inside, leave = 424242, threading.Event(), threading.Event()

    def handle_a_push():
        with trace.recording(context_id):
            trace.flow(context_id, 7, False, "gradients from w1", trace.now_us())
            inside.set()
            leave.wait(5)
            trace.span(context_id, "gradients from w1", 0.0, 1.0, "backward")

    worker = threading.Thread(target=handle_a_push)
    worker.start()
    assert inside.wait(5)
    threading.Timer(0.1, leave.set).start()
    events = trace.take(context_id)  # the pass ended; the push's span is added only as it finishes
    worker.join(5)
    assert [e["ph"] for e in events] == ["f", "X"]
    assert trace.take(context_id) == []


def test_take_waits_no_longer_than_its_bound():
    context_id, inside, leave = 434343, threading.Event(), threading.Event()
    stuck = threading.Thread(target=lambda: _record_until(context_id, inside, leave))
    stuck.start()
    try:
        assert inside.wait(5)
        trace.span(context_id, "before", 0.0, 1.0, "backward")
        assert [e["name"] for e in trace.take(context_id)] == ["before"]  # after TAKE_WAIT_SECONDS
    finally:
        leave.set()
        stuck.join(5)
    trace.forget(context_id)


def _record_until(context_id, inside, leave):
    with trace.recording(context_id):
        inside.set()
        leave.wait(10)
