"""Version 1 of the protocol (proto package ``distautograd.v1``): messages and service stubs."""
