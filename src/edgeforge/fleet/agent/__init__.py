"""The device agent: check in, fetch a signed release, canary it, activate, probe, commit.

Import boundary (tested): this package imports only the standard library, numpy,
cryptography, tuf (when fetching) and the device's runtime (when a model runs): never torch,
onnx or a converter, and nothing of edgeforge outside `edgeforge.fleet.{agent,client,protocol}`
and `edgeforge.errors`. See `_agent.py` for the state machine and its invariants.
"""

from __future__ import annotations

from edgeforge.fleet.agent._agent import Agent, AgentStatus, parse_size, verify_slot

__all__ = ["Agent", "AgentStatus", "parse_size", "verify_slot"]
