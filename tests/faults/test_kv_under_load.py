"""Issue #6, no data lost under load: a KV writer runs during a scale-up and a scale-down of the leader.

The writer runs inside the lab (on query1) and upserts `load/<n>` through the stand-in's KV API (the meta nodes'
gRPC port, the path `databend-meta --cmd kvapi::upsert` uses), one write at a time, moving to the next node when one
fails. A write counts as acknowledged only on a 200 reply. Afterwards every acknowledged key is read back with
`databend-meta --cmd kvapi::list` over SSH from every remaining node. Figures go to bench/kv-under-load.json.
"""

from __future__ import annotations

import contextvars
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.scale_down import scale_down
from flows.scale_up import scale_up
from sandbox.lab import Lab
from tests.faults.lab_state import assert_consistent, voters_and_leader

pytestmark = [pytest.mark.lab, pytest.mark.prefect]

REPO = Path(__file__).resolve().parent.parent.parent
REPORT = REPO / "bench" / "kv-under-load.json"
SPARE1 = "127.100.0.14"
STOP = "/tmp/kv-writer.stop"
PROGRESS = "/tmp/kv-writer.progress"

WRITER = r"""
import http.client, json, os, sys, time
endpoints, stop, progress = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
acks, failures, errors, current, index = [], 0, {}, 0, 0
while not os.path.exists(stop):
    key, value, addr = f"load/{index:06d}", f"value-{index}", endpoints[current]
    host, port = addr.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("POST", "/v1/grpc/kv/upsert", body=json.dumps({"key": key, "value": value}),
                     headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        body = reply.read().decode(errors="replace")
        conn.close()
        ok, why = reply.status == 200, f"{reply.status} {body[:80]}"
    except OSError as exc:
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if ok:
        acks.append([key, value, time.time(), addr])
        index += 1
        if index % 10 == 0:
            with open(progress, "w") as f:
                f.write(str(index))
    else:
        failures += 1
        errors[why[:60]] = errors.get(why[:60], 0) + 1
        current = (current + 1) % len(endpoints)
        time.sleep(0.05)
print(json.dumps({"acks": acks, "failures": failures, "errors": errors}))
"""


def _start_writer(lab: Lab, endpoints: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start the writer on query1 in a thread; its JSON summary lands in box["result"] when it stops."""
    lab.root_exec("query1", ["rm", "-f", STOP, PROGRESS])
    box: dict[str, Any] = {}

    def run() -> None:
        proc = lab.root_exec("query1", ["python3", "-c", WRITER, ",".join(endpoints), STOP, PROGRESS],
                             timeout_s=900, check=False)
        box["proc"] = proc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    return thread, box


def _acked(lab: Lab) -> int:
    text = lab.root_exec("query1", ["cat", PROGRESS], check=False).stdout.strip()
    return int(text) if text.isdigit() else 0


def _wait_for_progress(lab: Lab, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _acked(lab) < at_least:
        assert time.monotonic() < deadline, f"the writer acknowledged fewer than {at_least} writes in {timeout_s} s"
        time.sleep(0.2)


def _read_back(lab: Lab, name: str) -> dict[str, str]:
    """All `load/` keys -> values as `name`'s own state machine holds them, read with kvapi::list over SSH.

    The list is `[[key, {"seq": n, "meta": …, "data": value}], …]`.
    """
    grpc = f"{lab.host(name).ip}:9191"   # lab meta nodes bind their own IP only
    proc = lab.ssh(name, f"databend-meta --cmd kvapi::list --prefix load/ --grpc-api-address {grpc}",
                   timeout_s=60, check=True)
    return {key: record["data"] for key, record in json.loads(proc.stdout)}


def _longest_stall(ack_times: list[float], start: float, end: float) -> float:
    """The longest gap without an acknowledged write inside [start, end]."""
    marks = [start, *[t for t in ack_times if start <= t <= end], end]
    return max(b - a for a, b in zip(marks, marks[1:]))


def test_no_acknowledged_write_is_lost_during_scale_up_and_leader_scale_down(fresh_lab: Lab, tmp_path: Path) -> None:
    lab = fresh_lab
    inventory = tmp_path / "inventory.toml"
    shutil.copyfile(lab.inventory, inventory)
    endpoints = ["127.100.0.12:9191", "127.100.0.13:9191", "127.100.0.11:9191", f"{SPARE1}:9191"]
    thread, box = _start_writer(lab, endpoints)
    try:
        _wait_for_progress(lab, 20)
        up_start = time.time()
        up = scale_up(new_nodes=[{"host": SPARE1}], inventory=str(inventory), require_approval=False)
        up_end = time.time()
        assert up.voters_after == [1, 2, 3, 4]
        _, leader = voters_and_leader(lab, ["meta1", "meta2", "meta3", "spare1"])
        down_start = time.time()
        down = scale_down(node_ids=[leader], inventory=str(inventory), require_approval=False)
        down_end = time.time()
        assert down.voters_after == sorted({1, 2, 3, 4} - {leader})
        assert any("transfer_leadership" in step for step in down.changed_steps), down.changed_steps
        before_stop = _acked(lab)
        _wait_for_progress(lab, before_stop + 20)   # the writer still works on the new cluster
    finally:
        lab.root_exec("query1", ["touch", STOP])
        thread.join(timeout=120)
    assert not thread.is_alive(), "the writer did not stop"
    proc = box["proc"]
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    acks = result["acks"]
    ack_times = [a[2] for a in acks]
    during_up = sum(1 for t in ack_times if up_start <= t <= up_end)
    during_down = sum(1 for t in ack_times if down_start <= t <= down_end)
    assert during_up > 0 and during_down > 0, (during_up, during_down)

    voters = assert_consistent(lab, inventory)
    remaining = {1: "meta1", 2: "meta2", 3: "meta3", 4: "spare1"}
    missing: dict[str, list[str]] = {}
    deadline = time.monotonic() + 60
    for node_id in sorted(voters):
        name = remaining[node_id]
        while True:   # a follower may still be applying the last entries: poll until complete or the deadline
            stored = _read_back(lab, name)
            missing[name] = [k for k, v, _t, _a in acks if stored.get(k) != v]
            if not missing[name] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    figures = {
        "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "writes_acknowledged": len(acks), "failed_attempts": result["failures"], "errors": result["errors"],
        "acknowledged_during_scale_up": during_up, "acknowledged_during_scale_down": during_down,
        "longest_stall_s": round(_longest_stall(ack_times, up_start, down_end), 3),
        "longest_stall_scale_up_s": round(_longest_stall(ack_times, up_start, up_end), 3),
        "longest_stall_scale_down_s": round(_longest_stall(ack_times, down_start, down_end), 3),
        "scale_up_s": round(up_end - up_start, 2), "scale_down_s": round(down_end - down_start, 2),
        "removed_leader": leader, "read_back_from": [remaining[i] for i in sorted(voters)],
        "missing": {k: len(v) for k, v in missing.items()},
    }
    REPORT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nMEASURED kv under load: {json.dumps(figures)}")
    assert all(not v for v in missing.values()), f"acknowledged writes lost: { {k: v[:5] for k, v in missing.items()} }"
