"""The bench's reading of iperf3's JSON report: a report without its figures is no figure, never a crash."""

import json

from distautograd.bench import iperf


def test_a_report_gives_what_was_received_and_one_without_figures_gives_none():
    good = {"end": {"sum_sent": {"bits_per_second": 2.5e10}, "sum_received": {"bits_per_second": 2.4e10}}}
    assert iperf._received(json.dumps(good)) == 2.4e10
    for report in ["", "{", json.dumps({"error": "unable to receive control message"}),
                   json.dumps({"end": {"sum_sent": {"bits_per_second": 1.0}}}),  # ended without the receiver's
                   json.dumps({"end": {"sum_received": {}}}), json.dumps({"end": None}), "[]"]:
        assert iperf._received(report) is None, report
