"""The wire protocol's generated code: ``protocol/v1`` is made by scripts/gen_protos.py from protos/ and committed."""
