"""The IPv4 settings a lab node starts with: those a container on a Docker host gets."""

from __future__ import annotations

from pathlib import Path

from lab.deploy import docker_ipv4_settings


def fake_proc(tmp_path: Path) -> Path:
    for conf, values in (("all", {"rp_filter": "2", "forwarding": "0", "mc_forwarding": "0"}),
                         ("default", {"rp_filter": "1", "forwarding": "0"})):
        directory = tmp_path / "net" / "ipv4" / "conf" / conf
        directory.mkdir(parents=True)
        for key, value in values.items():
            (directory / key).write_text(value + "\n")
    (tmp_path / "net/ipv4/conf/all/mc_forwarding").chmod(0o444)
    return tmp_path


def test_initial_namespace_values_are_copied_and_forwarding_is_on(tmp_path: Path) -> None:
    settings = docker_ipv4_settings(fake_proc(tmp_path))
    assert settings["net.ipv4.conf.all.rp_filter"] == "2"
    assert settings["net.ipv4.conf.default.rp_filter"] == "1"
    assert settings["net.ipv4.ip_forward"] == "1"
    assert settings["net.ipv4.conf.all.forwarding"] == "1"
    assert "net.ipv4.conf.all.mc_forwarding" not in settings  # read-only in the kernel


def test_no_ipv6_setting_is_touched(tmp_path: Path) -> None:
    assert not [k for k in docker_ipv4_settings(fake_proc(tmp_path)) if "ipv6" in k]
