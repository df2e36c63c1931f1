"""Seeded random SIGKILLs during pod churn: agents, ExaBGP, the cluster controller and one etcd member.

Three BGP nodes (real agents, ExaBGP, the real CNI plugin) on a three-member etcd cluster, with a
controller running its IPAM GC (short grace). For ``TABBY_FAULT_KILL_SECONDS`` (default 30) pods
are added and deleted on random nodes while ``TABBY_FAULT_KILLS`` faults (default 6) land at
seeded random moments: each SIGKILLs one target and brings it back after a seeded delay, as the
image's supervisor would (ExaBGP is brought back by its agent's own supervision). At most one
etcd member is down at a time (quorum kept). A failed ADD is followed by DEL, as the runtime's
CNI contract requires (retried until it succeeds).

The seed is ``TABBY_FAULT_SEED`` or a fresh one, printed first, so a failure can be replayed:
``TABBY_FAULT_SEED=<seed> pytest -s tests/fault/test_random_kills.py``.

During the faults a ping every 0.2 s between pods on two nodes loses nothing (every target is
control plane: the kernel keeps the routes, peers keep a restarting ExaBGP's routes for the
graceful-restart time). Afterwards, with everything back: all BGP sessions Established, every live pod answers a ping
from a probe pod on another node, no two live pods share an address, and once the controller's GC
has run, ``ipam check`` against the live WorkloadEndpoints is clean and the allocated addresses
are exactly the live pods' (nothing leaked by a killed ADD, nothing lost).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.node.inuse import live_allocations
from datastore import Datastore, EtcdConfig
from ipam import IPAMClient
from tests.helpers.etcd import EtcdCluster
from tests.integration.bgp.agent_lab import BGP_POOL, BgpLab, wait_for
from tests.integration.node.conftest import ROOT, Pod, apply_pool

SECONDS = float(os.environ.get("TABBY_FAULT_KILL_SECONDS", "30"))
KILLS = int(os.environ.get("TABBY_FAULT_KILLS", "6"))
MAX_LIVE = 6
AGENT_ENV = {"TABBY_LIVENESS_TTL": "2", "TABBY_CNI_TIMEOUT": "3"}


def _check(endpoints: tuple[str, ...]) -> tuple[bool, list[str], int]:
    async def go() -> tuple[bool, list[str], int]:
        async with Datastore(EtcdConfig(endpoints=endpoints, prefix="/tabby/")) as ds:
            report = await IPAMClient(ds).check(in_use=await live_allocations(ds))
            return report.ok, [p.message for p in report.problems], report.allocated_ips

    return asyncio.run(go())


class Controller:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**env, "TABBY_CONTROLLER_INTERVAL": "0.5", "TABBY_LEADER_TTL": "2", "TABBY_IPAM_GC_GRACE": "2",
                    "TABBY_NODE_CLEANUP_DELAY": "30", "TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": "0",
                    "TABBY_LOG_FORMAT": "json"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "controller.cluster"], cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_random_kills_under_churn(tmp_path: Path, private_env: dict[str, str]) -> None:
    seed = int(os.environ.get("TABBY_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nfault random-kills: seed {seed} (replay: TABBY_FAULT_SEED={seed})", flush=True)
    rng = random.Random(seed)
    cluster = EtcdCluster(tmp_path / "etcd-cluster")
    cluster.start()
    endpoints = tuple(cluster.endpoint(i) for i in range(3))
    env = {**private_env, "ETCD_ENDPOINTS": ",".join(endpoints)}
    lab = BgpLab(tmp_path, env)
    controller = Controller(env, tmp_path / "controller.log")
    events: list[str] = []
    start = time.monotonic()

    def note(what: str) -> None:
        events.append(f"{time.monotonic() - start:6.1f}s {what}")
        print(f"  {events[-1]}", flush=True)

    try:
        apply_pool(env, BGP_POOL)
        lab.add_nodes(3)
        nodes = list(lab.nodes)
        for n in nodes:
            lab.set_address(n)
            lab.start_agent(n, **AGENT_ENV)
        for n in nodes:
            wait_for(f"{n}: 2 sessions", lambda n=n: lab.established(n, 2), timeout=60)
        controller.start()
        probes = {n: lab.add_pod(n, f"probe{i}") for i, n in enumerate(nodes)}
        setup_s = time.monotonic() - start
        start = time.monotonic()  # the plan's clock starts with the churn

        # The fault plan: seeded moments and targets, each brought back after a seeded delay.
        targets = [*(f"agent:{n}" for n in nodes), *(f"exabgp:{n}" for n in nodes), "controller",
                   *(f"etcd:{i}" for i in range(3))]
        plan = sorted((rng.uniform(2.0, SECONDS - 4.0), rng.choice(targets), rng.uniform(0.5, 3.0))
                      for _ in range(KILLS))
        note("plan: " + ", ".join(f"{t:.1f}s {what} (back after {d:.1f}s)" for t, what, d in plan))
        down: dict[str, float] = {}  # target -> when to bring it back

        def inject(what: str) -> bool:
            kind, _, arg = what.partition(":")
            if what in down or (kind == "etcd" and any(t.startswith("etcd:") for t in down)):
                return False  # already down / keep etcd's quorum
            if kind == "agent":
                lab.agents[arg].stop(signal.SIGKILL)
            elif kind == "exabgp":
                pid_file = lab.run_root / arg / "bgp" / "exabgp.pid"
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
                except (OSError, ValueError):
                    return False
            elif kind == "controller":
                controller.kill()
            else:
                cluster.kill(int(arg))
            return True

        def revive(what: str) -> None:
            kind, _, arg = what.partition(":")
            if kind == "agent":
                lab.start_agent(arg, wait=False, **AGENT_ENV)
            elif kind == "controller":
                controller.start()
            elif kind == "etcd":
                cluster.restart(int(arg))
            # exabgp: its agent's Speaker restarts it (nothing to do here)

        # Existing pods keep talking through every fault: a ping between the probes of two nodes.
        pa, pb = probes[nodes[0]], probes[nodes[1]]
        interval = 0.2
        pinger = subprocess.Popen(["ip", "netns", "exec", pa.netns, "ping", "-n", "-q", "-i", str(interval), "-c",
                                   str(int(SECONDS / interval)), "-W", "1", pb.ip], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        live: list[Pod] = []
        to_delete: list[Pod] = []  # failed ADDs (DEL owed) and deleted pods whose DEL failed
        adds = add_failures = dels = 0
        refusals: dict[str, int] = {}
        i = 0
        while True:
            now = time.monotonic() - start
            if plan and now >= plan[0][0]:
                _at, what, delay = plan.pop(0)
                if inject(what):
                    down[what] = now + delay
                    note(f"SIGKILL {what}")
            for what, back in list(down.items()):
                if now >= back:
                    revive(what)
                    down.pop(what)
                    note(f"back {what}")
            if now >= SECONDS and not plan:
                break
            i += 1
            node = rng.choice(nodes)
            pod = lab.add_pod(node, f"c{i}", expect_ok=False)
            if pod.result.get("ips"):
                live.append(pod)
                adds += 1
            else:
                add_failures += 1
                why = str(pod.result.get("code", "?"))
                refusals[why] = refusals.get(why, 0) + 1
                to_delete.append(pod)
            if len(live) > MAX_LIVE:
                to_delete.append(live.pop(rng.randrange(len(live))))
            for old in list(to_delete):
                code, _out = lab.del_pod(old)
                if code == 0:
                    to_delete.remove(old)
                    dels += 1
        for what in list(down):
            revive(what)
            note(f"back {what}")
        down.clear()

        ping_out, _ = pinger.communicate(timeout=SECONDS + 30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out)
        assert m, ping_out
        sent, got = int(m.group(1)), int(m.group(2))
        note(f"pings {nodes[0]} -> {nodes[1]} during the faults: {got}/{sent}")
        # Agents, ExaBGP (graceful restart), the controller and one etcd member are control plane only.
        assert got == sent, f"{sent - got} pings lost between existing pods; seed {seed}; events:\n" + "\n".join(events)

        # Everything back: agents answer, sessions up, owed DELs done.
        for n in nodes:
            lab.wait_ready(n, timeout=60)
        for n in nodes:
            wait_for(f"{n}: 2 sessions after the faults", lambda n=n: lab.established(n, 2), timeout=60)
        deadline = time.monotonic() + 30
        while to_delete:
            old = to_delete.pop(0)
            code, out = lab.del_pod(old)
            if code != 0:
                assert time.monotonic() < deadline, f"DEL {old.name} still failing: {out}"
                to_delete.append(old)
                time.sleep(0.5)
            else:
                dels += 1

        # Every live pod (and probe) reachable from a probe on another node; no address twice.
        everyone = [*probes.values(), *live]
        ips = [p.ip for p in everyone]
        assert len(set(ips)) == len(ips), f"duplicate pod addresses: {sorted(ips)}"

        def reachable(pod: Pod) -> bool:
            src = next(p for n, p in probes.items() if n != pod.node)
            return lab.ping(src.netns, pod.ip, count=1, wait=1)

        unreachable: list[str] = []
        for pod in everyone:
            ok = False
            until = time.monotonic() + 20
            while not ok and time.monotonic() < until:
                ok = reachable(pod)
            if not ok:
                unreachable.append(f"{pod.name}@{pod.node} {pod.ip}")
        assert not unreachable, f"unreachable after the faults: {unreachable}"

        # After the GC (grace 2 s): nothing leaked, nothing lost.
        result: tuple[bool, list[str], int] = (False, [], -1)

        def clean() -> bool:
            nonlocal result
            result = _check(endpoints)
            return result[0] and result[2] == len(everyone)

        try:
            wait_for("ipam check clean and no leaked address after GC", clean, timeout=40, interval=1.0)
        except AssertionError:
            raise AssertionError(f"ipam check: ok={result[0]} allocated={result[2]} live={len(everyone)} "
                                 f"problems={result[1][:5]}; seed {seed}; events:\n" + "\n".join(events)) from None
        elapsed = time.monotonic() - start
        print(f"fault random-kills: seed {seed}, {len([e for e in events if 'SIGKILL' in e])} kills, churn {adds} ADD "
              f"ok / {add_failures} refused (codes {refusals}), {dels} DEL, {adds / SECONDS:.2f} pods/s, "
              f"pings {got}/{sent} ({sent - got} lost), {len(everyone)} pods reachable, "
              f"ipam check clean, allocated {result[2]} = live, setup {setup_s:.0f}s, "
              f"{elapsed:.0f}s after", flush=True)
    finally:
        if "pinger" in locals() and pinger.poll() is None:
            pinger.kill()
        controller.stop()
        lab.cleanup()
        cluster.stop()
