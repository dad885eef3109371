"""`decide`: run a model on the edge device, in the cloud, or both (hybrid)?

`decide(model, device, ...)` returns a `Decision` whose `to_dict()` is the JSON contract of
`edgeforge decide`. This package only re-exports the public names; the machinery lives in
underscore modules, each stating its invariants: `_decision` (the orchestration), `_options`
(reading the options), `_edge_side` and `_cloud_side` (each side's latency, constraints and
cost), `_recommend` (the rule), `_breakeven` (the cross-over points and curves), `_rows` (the
comparison table) and `_data` (the data files). `network`, `cloud`, `queueing` and `render` are
public modules of their own.
"""

from __future__ import annotations

from edgeforge.decide._data import load_data
from edgeforge.decide._decision import Decision, decide
from edgeforge.decide._options import parse_bytes
from edgeforge.decide.cloud import CloudInstance, get_cloud_instance, list_cloud_instances
from edgeforge.decide.network import Network, get_network, parse_network_spec
from edgeforge.decide.queueing import erlang_c, mean_wait_s

__all__ = [
    "CloudInstance",
    "Decision",
    "Network",
    "decide",
    "erlang_c",
    "get_cloud_instance",
    "get_network",
    "list_cloud_instances",
    "load_data",
    "mean_wait_s",
    "parse_bytes",
    "parse_network_spec",
]
