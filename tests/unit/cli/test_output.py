"""Pure pieces of tabbyctl: calicoctl's table shapes, merge patch, error classification, logs."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from common import logs
from controller.cli.context import UserError, cli_timeout, user_problems
from controller.cli.output import box_table, go_g5, list_object, tabwriter, to_yaml, usage_cell
from controller.cli.resources import merge_patch


def test_tabwriter_matches_go_tabwriter_padding() -> None:
    rows = [{"NAME": "pool-a", "CIDR": "10.0.0.0/16", "SELECTOR": "all()"}]
    assert tabwriter(rows) == ("NAME     CIDR          SELECTOR\npool-a   10.0.0.0/16   all()\n")
    # minimum cell width 5 (Go: minwidth), padding 3
    assert tabwriter([{"A": "x", "B": "y"}]) == "A    B\nx    y\n"
    assert tabwriter([], ["NAME", "CIDR"]) == "NAME   CIDR\n"


def test_box_table_matches_calicoctl_ipam_show() -> None:
    rows = [["IP Pool", "10.0.0.0/16", "65536", usage_cell(5, 65536), usage_cell(65531, 65536)]]
    assert box_table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], rows) == (
        "+----------+-------------+-----------+------------+--------------+\n"
        "| GROUPING |    CIDR     | IPS TOTAL | IPS IN USE |   IPS FREE   |\n"
        "+----------+-------------+-----------+------------+--------------+\n"
        "| IP Pool  | 10.0.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |\n"
        "+----------+-------------+-----------+------------+--------------+\n"
    )


@pytest.mark.parametrize(
    ("part", "total", "text"),
    [(5, 64, "5 (8%)"), (59, 64, "59 (92%)"), (0, 256, "0 (0%)"), (1048576, 1048576, "1.0486e+06 (100%)")],
)
def test_usage_cells_as_go_prints_them(part: int, total: int, text: str) -> None:
    assert usage_cell(part, total) == text


def test_go_g5() -> None:
    assert go_g5(65536) == "65536"
    assert go_g5(16777216) == "1.6777e+07"


def test_list_object_and_yaml_sorted_like_calicoctl() -> None:
    doc = list_object("IPPool", [], 12)
    assert doc == {
        "kind": "IPPoolList",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"resourceVersion": "12"},
        "items": [],
    }
    assert to_yaml(doc).splitlines() == [
        "apiVersion: projectcalico.org/v3",
        "items: []",
        "kind: IPPoolList",
        "metadata:",
        "  resourceVersion: '12'",
    ]


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": 1}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}
    assert target["c"] == {"d": "e", "f": "g"}  # input untouched
    assert merge_patch({"a": 1}, ["x"]) == ["x"]


def test_user_problems_classifies_known_errors() -> None:
    from datastore import ConfigError, DatastoreUnavailable

    assert user_problems(UserError(["a", "b"])) == ["a", "b"]
    assert user_problems(DatastoreUnavailable(["http://x:1"], "refused")) == ["etcd unreachable at http://x:1: refused"]
    assert user_problems(ConfigError("ETCD_ENDPOINTS: bad")) == ["ETCD_ENDPOINTS: bad"]
    assert user_problems(KeyError("bug")) is None


def test_cli_timeout() -> None:
    assert cli_timeout({}) == 5.0
    assert cli_timeout({"TABBY_ETCD_TIMEOUT": "1.5"}) == 1.5
    with pytest.raises(UserError):
        cli_timeout({"TABBY_ETCD_TIMEOUT": "0"})


def test_logs_json_lines_with_consistent_keys() -> None:
    stream = io.StringIO()
    logs.configure(level="info", fmt="json", stream=stream)
    try:
        structlog.get_logger("tabby.test").info("thing.happened", count=3)
        structlog.get_logger("tabby.test").debug("hidden")
        logging.getLogger("aetcd").warning("from stdlib")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logs.configure(level="warning", fmt="console")
    assert [entry["event"] for entry in lines] == ["thing.happened", "from stdlib"]
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "tabby.test" and lines[0]["count"] == 3
    assert lines[1]["logger"] == "aetcd" and lines[1]["level"] == "warning"
    assert all("timestamp" in entry for entry in lines)


def test_logs_reject_unknown_level() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.configure(level="chatty")


def test_unexpected_exception_is_one_line_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import main as cli_main
    from controller.cli import version as version_cmd

    def boom() -> str:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(version_cmd, "client_version", boom)
    assert cli_main.main(["version"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["internal error: RuntimeError: boom", "Rerun with --log-level debug to see the traceback."]
    assert cli_main.main(["--log-level", "debug", "version"]) == 1
    err_text = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err_text and "internal error: RuntimeError: boom" in err_text
