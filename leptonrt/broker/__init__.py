"""The broker: an asyncio shell around I/O-free cores (protocol, plan, run)."""
