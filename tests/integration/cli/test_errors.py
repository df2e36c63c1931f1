"""Every user mistake ends in one clear line per problem on stderr, exit 1, no traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest


def test_unreachable_etcd_is_one_line_within_the_bound(ctl: Any, no_etcd_env: dict[str, str]) -> None:
    started = time.monotonic()
    res = ctl("get", "ippool", env=no_etcd_env)
    elapsed = time.monotonic() - started
    assert res.rc == 1
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith("Error: etcd unreachable at http://127.0.0.1:9")
    assert elapsed < 2 + 3, elapsed  # TABBY_ETCD_TIMEOUT=2 plus process start-up


def test_unreachable_etcd_default_bound_and_flag_override(ctl: Any, etcd_env: dict[str, str]) -> None:
    env = dict(etcd_env)
    env["ETCD_ENDPOINTS"] = "http://127.0.0.1:9"
    env.pop("TABBY_ETCD_TIMEOUT", None)
    started = time.monotonic()
    res = ctl("create", "-f", "-", input="", env=env)
    # Empty input is refused before any connection is attempted.
    assert res.rc == 1 and "no resources found" in res.err
    assert time.monotonic() - started < 3
    started = time.monotonic()
    res = ctl("--etcd-endpoints", "http://127.0.0.1:7,http://127.0.0.1:9", "get", "nodes", env=env)
    elapsed = time.monotonic() - started
    assert res.rc == 1
    assert res.err_lines == [res.err_lines[0]]
    assert "etcd unreachable at http://127.0.0.1:7, http://127.0.0.1:9" in res.err_lines[0]
    assert 4 < elapsed < 5 + 3, elapsed  # the 5 s CLI default


def test_flag_overrides_environment_endpoints(ctl: Any, etcd_env: dict[str, str]) -> None:
    env = dict(etcd_env)
    good = env["ETCD_ENDPOINTS"]
    env["ETCD_ENDPOINTS"] = "http://127.0.0.1:9"
    res = ctl("--etcd-endpoints", good, "get", "ippool", env=env)
    assert res.rc == 0, res.err


def test_version_without_etcd_says_unknown(ctl: Any, no_etcd_env: dict[str, str]) -> None:
    res = ctl("version", env=no_etcd_env)
    assert res.rc == 0, res.err
    assert "Client Version:" in res.out
    assert "Cluster Version:   unknown" in res.out
    assert res.err == ""


def test_version_with_etcd(ctl: Any) -> None:
    res = ctl("version")
    assert res.rc == 0, res.err
    assert res.out.splitlines()[0].startswith("Client Version:    v")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a\n", "document 1"),
        ("kind: IPPool\n  bad indent: [\n", "input.yaml"),
        ("apiVersion: projectcalico.org/v3\nkind: NoSuchKind\nmetadata: {name: a}\n", "NoSuchKind"),
        ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.1/16}\n", "cidr"),
        ("- just\n- a list\n", "input.yaml"),
    ],
)
def test_bad_input_is_reported_per_problem(
    ctl: Any, write: Callable[[str, str], str], text: str, expected: str
) -> None:
    res = ctl("create", "-f", write("input.yaml", text))
    assert res.rc == 1
    assert res.out == ""
    assert res.err_lines and all(line.startswith("Error: ") for line in res.err_lines)
    assert expected in res.err


def test_missing_file_directory_and_usage_errors(ctl: Any, tmp_path: Any) -> None:
    res = ctl("apply", "-f", str(tmp_path / "nope.yaml"))
    assert res.rc == 1
    assert res.err_lines == [f"Error: {tmp_path / 'nope.yaml'}: No such file or directory"]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = ctl("apply", "-f", str(empty))
    assert res.rc == 1 and "no .yaml, .yml or .json file" in res.err
    res = ctl("delete", "ippool")
    assert res.rc == 1 and "delete needs -f FILE or KIND NAME" in res.err
    res = ctl("create")  # click usage error: exit 2 with a usage hint, still no traceback
    assert res.rc == 2 and "Missing option '-f'" in res.err


def test_bad_datastore_settings(ctl: Any, etcd_env: dict[str, str], tmp_path: Any) -> None:
    env = dict(etcd_env, ETCD_ENDPOINTS="ftp://x")
    res = ctl("get", "ippool", env=env)
    assert res.rc == 1 and res.err_lines == ["Error: ETCD_ENDPOINTS: 'ftp://x': scheme must be http, https or unix"]
    env = dict(etcd_env, ETCD_CA_CERT_FILE=str(tmp_path / "missing-ca.pem"))
    res = ctl("get", "ippool", env=env)
    assert res.rc == 1 and "ETCD_CA_CERT_FILE: no such file" in res.err
    res = ctl("-c", str(tmp_path / "nope.cfg"), "get", "ippool")
    assert res.rc == 1 and "config file" in res.err
    bad = tmp_path / "bad.cfg"
    bad.write_text("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  etcdEndpoint: http://x\n")
    res = ctl("get", "ippool", "-c", str(bad))
    assert res.rc == 1 and "spec.etcdEndpoint: unknown setting" in res.err
    res = ctl("get", "ippool", env=dict(etcd_env, TABBY_ETCD_TIMEOUT="soon"))
    assert res.rc == 1 and res.err_lines == ["Error: TABBY_ETCD_TIMEOUT: must be a number of seconds, got 'soon'"]


def test_log_format_json_goes_to_stderr(ctl: Any, write: Callable[[str, str], str], pool_doc: Any) -> None:
    path = write("a.yaml", pool_doc("a", "10.9.0.0/16"))
    res = ctl("--log-level", "info", "--log-format", "json", "create", "-f", path)
    assert res.rc == 0, res.err
    assert res.out.strip() == "Successfully created 1 'IPPool' resource(s)"
    events = [json.loads(line) for line in res.err_lines]
    committed = [e for e in events if e["event"] == "resource_store.committed"]
    assert committed and committed[0]["level"] == "info" and committed[0]["logger"] == "tabby.resource_store"
    assert "timestamp" in committed[0]
