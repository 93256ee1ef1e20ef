"""The wire protocol's generated code: ``protocol/v1`` is made by scripts/gen_protos.py from protos/ and committed.

Service names come from the protocol definition itself, so they are written in one place.
"""

from distautograd.protocol.v1 import messages_pb2 as _pb

COORDINATOR_SERVICE = _pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
WORKER_SERVICE = _pb.DESCRIPTOR.services_by_name["Worker"].full_name
