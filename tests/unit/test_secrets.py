"""Issue #10, Secrets: secret values never show, in diffs (by key) nor anywhere else (by value).

Pure: no hosts, no Prefect server.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from metascale import config, redact
from metascale.errors import PlanRefused, RemoteCommandError
from metascale.plan import FileChange, ScalePlan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PLANTED = "pl4nted-Query-Pw-7f3a9"


@pytest.fixture(autouse=True)
def _clean_registry():  # type: ignore[no-untyped-def]
    redact.forget_all()
    yield
    redact.forget_all()


def test_query_password_two_lines_below_endpoints_is_not_in_the_endpoints_diff() -> None:
    text = (FIXTURES / "configs/databend-query.toml").read_text().replace('password = "root"',
                                                                           f'password = "{PLANTED}"')
    assert PLANTED in text
    diff = config.unified_diff(text, config.set_meta_endpoints(text, ["127.100.0.11:9191"]), "q:/etc/q.toml")
    assert "+endpoints" in diff and 'password = "***"' in diff and PLANTED not in diff


@pytest.mark.parametrize(("line", "secret"), [
    ('auth = { user = "root", password = "inline-Pw-123" }', "inline-Pw-123"),
    ("'token' = 'quoted-token-123'", "quoted-token-123"),
    ('meta.credential = "dotted-cred-123"', "dotted-cred-123"),
    ('auth_string = "3081f32caef285c2"', "3081f32caef285c2"),
    ('# secret_access_key = "commented-key-123"', "commented-key-123"),
    ('raft_secret="no-spaces-secret-1"', "no-spaces-secret-1"),
])
def test_secret_values_are_masked_in_any_form_of_toml_key(line: str, secret: str) -> None:
    masked = config.mask_secrets(f"[meta]\n{line}\nendpoints = ['a:1']\n")
    assert secret not in masked and '"***"' in masked and "endpoints = ['a:1']" in masked
    assert secret in redact.secret_values(line)


def test_multi_line_secret_values_are_masked_whole() -> None:
    text = ('[raft_config]\nraft_accepted_secrets = [\n  "first-secret-1",\n  "second-secret-2",\n]\n'
            'raft_secret_strict = true\npassword = """\nmulti-line-pw-1\n"""\nid = 1\n')
    masked = config.mask_secrets(text)
    for secret in ("first-secret-1", "second-secret-2", "multi-line-pw-1"):
        assert secret not in masked
    assert "raft_secret_strict = true" in masked and "id = 1" in masked
    assert {"first-secret-1", "second-secret-2", "multi-line-pw-1"} <= redact.secret_values(text)


def test_values_read_from_a_config_are_redacted_from_errors_plans_and_log_records(
        caplog: pytest.LogCaptureFixture) -> None:
    raft = "r4ft-Secret-planted-91"
    redact.register_from_config(f'[raft_config]\nraft_secret = "{raft}"\n[meta]\npassword = "{PLANTED}"\n')
    error = RemoteCommandError("127.100.0.11", "databend-meta --leave-id 3", 1, f"bad secret {raft}; pw {PLANTED}")
    assert raft not in str(error) and PLANTED not in str(error) and "bad secret ***; pw ***" in str(error)
    assert PLANTED not in str(PlanRefused("scale-up", f"saw {PLANTED}"))
    plan = ScalePlan(action="scale-up", cluster="lab", voters_before=(1,), voters_after=(1,), leader_before=1,
                     answering=(1,), changes=(), join_after=("127.100.0.11:28004",),
                     endpoints_after=("127.100.0.11:9191",), notes=(f"a note quoting {raft}",),
                     file_changes=(FileChange(host="h", path="/p", diff=f"+ journal line with {raft}\n"),))
    assert raft not in plan.to_markdown()
    redact.install_log_redaction()
    logger = logging.getLogger("metascale.test_secrets")
    with caplog.at_level(logging.INFO, logger="metascale.test_secrets"):
        logger.info("stderr tail: %s", raft)
        try:
            raise RuntimeError(f"library echoed {PLANTED}")
        except RuntimeError:
            logger.exception("failed")
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert raft not in text and PLANTED not in text and "stderr tail: ***" in text
    assert "library echoed ***" in text


def test_short_values_are_masked_by_key_but_not_redacted_everywhere() -> None:
    redact.register_from_config('[meta]\npassword = "root"\n')
    assert redact.redact("user root on host") == "user root on host"
    assert 'password = "***"' in config.mask_secrets('[meta]\npassword = "root"\n')
