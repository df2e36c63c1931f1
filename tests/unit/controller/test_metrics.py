"""Metrics settings (Felix's names and precedence) and the endpoint's routes, on loopback."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from controller.metrics import (
    MetricsConfigError,
    MetricsServer,
    MetricsSettings,
    agent_settings,
    controller_settings,
)


def test_felix_defaults_and_env_over_felixconfiguration() -> None:
    assert agent_settings({}) == MetricsSettings(enabled=False, port=9091, host="")
    spec = {"prometheusMetricsEnabled": True, "prometheusMetricsPort": 9200}
    assert agent_settings({}, spec) == MetricsSettings(enabled=True, port=9200)
    env = {"FELIX_PROMETHEUSMETRICSENABLED": "false", "FELIX_PROMETHEUSMETRICSPORT": "9300"}
    assert agent_settings(env, spec) == MetricsSettings(enabled=False, port=9300)
    assert controller_settings({}) == MetricsSettings(enabled=True, port=9094)
    assert controller_settings({"TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": "0"}).enabled is False


@pytest.mark.parametrize(("env", "message"), [
    ({"FELIX_PROMETHEUSMETRICSENABLED": "maybe"}, "FELIX_PROMETHEUSMETRICSENABLED: must be true or false, got 'maybe'"),
    ({"FELIX_PROMETHEUSMETRICSPORT": "70000"},
     "FELIX_PROMETHEUSMETRICSPORT: must be a port number between 1 and 65535, got '70000'"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(MetricsConfigError) as exc:
        agent_settings(env)
    assert str(exc.value) == message


def test_server_routes_on_loopback() -> None:
    registry = CollectorRegistry()
    Counter("tabby_test_things", "things", registry=registry).inc(3)
    ready: list[str] = ["waiting for the first datastore snapshot"]

    async def go() -> None:
        server = MetricsServer(registry, healthz=lambda: (True, []), readyz=lambda: (not ready, list(ready)))
        await server.start(MetricsServer.listening_socket("127.0.0.1", 0))
        base = f"http://127.0.0.1:{server.port}"

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        try:
            code, body = await asyncio.to_thread(get, "/metrics")
            assert code == 200 and "tabby_test_things_total 3.0" in body
            assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")
            assert await asyncio.to_thread(get, "/readyz") == (503, "waiting for the first datastore snapshot\n")
            ready.clear()
            assert await asyncio.to_thread(get, "/readyz") == (200, "ok\n")
            assert (await asyncio.to_thread(get, "/nothing"))[0] == 404
        finally:
            await server.stop()

    asyncio.run(go())
