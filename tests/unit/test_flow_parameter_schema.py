"""Issue #11, the Custom run form: every flow parameter is described, and the parameter schema (what Prefect's form
and REST API enforce before a run exists) refuses bad values and accepts good ones.

No server: the schema is checked with the validator Prefect's server runs on `create_flow_run`
(`prefect.utilities.schema_tools.validation.validate`); tests/e2e/test_operator_form.py checks the server itself.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from prefect.utilities.schema_tools.validation import ValidationError, validate

from flows.cluster_check import cluster_check
from flows.common import HOST_PATTERN, schema_pattern
from flows.replace_node import replace_node
from flows.scale_down import scale_down
from flows.scale_up import scale_up
from flows.sync_inventory import sync_inventory
from metascale.inventory import validate_host
from tasks.cluster_block import MetaCluster, cluster_block_name

FLOWS = {f.name: f for f in (scale_up, scale_down, replace_node, sync_inventory, cluster_check)}
BLOCK_REF = {"$ref": {"block_document_id": "0b5e3f1c-2a4d-4c6e-9f10-1234567890ab"}}


def _schema(flow_name: str) -> dict[str, Any]:
    return FLOWS[flow_name].parameters.model_dump()


def test_every_parameter_of_every_flow_has_a_description_and_approval_is_on_by_default() -> None:
    for name, flow in FLOWS.items():
        properties = _schema(name)["properties"]
        assert properties, name
        bare = [p for p, spec in properties.items() if len(spec.get("description") or "") < 20]
        assert not bare, f"{name}: parameters without a description in the docstring's Args: {bare}"
        if "require_approval" in properties:
            assert properties["require_approval"]["default"] is True, name
    assert set(FLOWS) - {"cluster-check"} == {n for n in FLOWS if "require_approval" in _schema(n)["properties"]}


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("scale-down", {"node_ids": [0, 4], "cluster_block": "prod-eu", "leave_timeout_s": 0.5,
                    "maintenance_window": "Sat,Sun 02:00-04:00 Europe/Berlin"}),
    ("scale-down", {"node_ids": [3], "cluster_block": BLOCK_REF}),            # what the form's block picker sends
    ("scale-down", {"node_ids": [3], "inventory": "/etc/metascale/prod.toml", "cluster_block": ""}),
    ("scale-up", {"new_nodes": [{"host": "192.0.2.14"}, {"host": "fd00::4", "node_id": 7}, {"host": "meta-5.example"}],
                  "cluster_block": "lab", "approval_timeout_s": 60, "verify_deadline_s": 30}),
    ("replace-node", {"node_id": 0, "new_host": "", "cluster_block": "lab"}),
    ("replace-node", {"node_id": 3, "new_host": "192.0.2.15", "inventory": "inv/lab.toml"}),
    ("sync-inventory", {"cluster_block": BLOCK_REF, "approval_timeout_s": 1}),
    ("cluster-check", {"cluster_block": "lab", "silent_threshold_s": 0}),
]

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("scale-down", {"node_ids": []}, "node_ids"),
    ("scale-down", {"node_ids": [-1]}, "node_ids"),
    ("scale-down", {"node_ids": [3], "verify_deadline_s": -1}, "verify_deadline_s"),
    ("scale-down", {"node_ids": [3], "leave_timeout_s": 0}, "leave_timeout_s"),
    ("scale-down", {"node_ids": [3], "approval_timeout_s": 0}, "approval_timeout_s"),
    ("scale-down", {"node_ids": [3], "inventory": "/tmp/x;touch /tmp/pwned"}, "inventory"),
    ("scale-down", {"node_ids": [3], "cluster_block": "lab`id`"}, "cluster_block"),
    ("scale-down", {"node_ids": [3], "cluster_block": {"name": "lab"}}, "cluster_block"),
    ("scale-down", {"node_ids": [3], "maintenance_window": "Sat 02:00-04:00 $(reboot)"}, "maintenance_window"),
    ("scale-up", {"new_nodes": []}, "new_nodes"),
    ("scale-up", {"new_nodes": [{"host": "a;touch /tmp/pwned"}]}, "new_nodes"),
    ("scale-up", {"new_nodes": [{"host": "fe80::1%eth0"}]}, "new_nodes"),
    ("scale-up", {"new_nodes": [{"host": "192.0.2.14", "raft_port": 70000}]}, "new_nodes"),
    ("replace-node", {"node_id": -2}, "node_id"),
    ("replace-node", {"node_id": 3, "new_host": "-oProxyCommand=x"}, "new_host"),
    ("sync-inventory", {"approval_timeout_s": -5}, "approval_timeout_s"),
    ("cluster-check", {"silent_threshold_s": -1.5}, "silent_threshold_s"),
    ("cluster-check", {"cluster_block": "lab\n"}, "cluster_block"),
]


@pytest.mark.parametrize(("flow_name", "parameters"), GOOD)
def test_the_schema_accepts_good_values(flow_name: str, parameters: dict[str, Any]) -> None:
    validate(parameters, _schema(flow_name), raise_on_error=True)


@pytest.mark.parametrize(("flow_name", "parameters", "field"), BAD)
def test_the_schema_refuses_bad_values_naming_the_field(flow_name: str, parameters: dict[str, Any],
                                                         field: str) -> None:
    with pytest.raises(ValidationError, match=f"'{field}"):
        validate(parameters, _schema(flow_name), raise_on_error=True)


@pytest.mark.parametrize("host", ["192.0.2.14", "127.100.0.11", "0.0.0.0", "255.255.255.255", "fd00::4", "::1",
                                  "::ffff:192.0.2.1", "meta1", "meta-1.example.com", "meta-1.example.com.", "a" * 63,
                                  "1host", "x.1a", "999.1.1.1", "1.2.3", "192.0.2.014", "fe80::1%eth0", "a;b",
                                  "-oProxyCommand=x", "meta_1", "[fd00::4]", "a b", "host\n", "", "a" * 64,
                                  "meta-.example", "::::::::::", "1.2.3.4.5", "lab\n"])
def test_the_host_pattern_agrees_with_validate_host(host: str) -> None:
    """The pattern in the schema accepts what `validate_host` accepts (no false refusal in the form) and refuses
    what it refuses, on these samples (the Python check stays the exact rule)."""
    try:
        validate_host(host)
        valid = True
    except ValueError:
        valid = False
    if valid:
        assert re.search(schema_pattern(HOST_PATTERN), host), f"the schema would refuse the valid host {host!r}"
    elif host not in {"::::::::::"}:  # the IPv6 part of the pattern is loose on purpose: only hex digits, ':', '.'
        assert not re.search(schema_pattern(HOST_PATTERN), host), f"the schema would accept the invalid host {host!r}"


def test_cluster_block_parameter_becomes_the_block_name() -> None:
    """A picked block reaches the flow body as its name (the engine resolves the picker's $ref to the block)."""
    saved = MetaCluster(inventory_toml="")
    saved._block_document_name = "prod-eu"
    assert cluster_block_name(saved) == "prod-eu"
    assert cluster_block_name("lab") == "lab" and cluster_block_name(None) == ""
    with pytest.raises(ValueError, match="never saved"):
        cluster_block_name(MetaCluster(inventory_toml=""))
    params = scale_down.validate_parameters({"node_ids": [3], "cluster_block": saved})
    assert params["cluster_block"] == "prod-eu"
    assert scale_down.validate_parameters({"node_ids": [3], "inventory": "x.toml"})["cluster_block"] == ""
