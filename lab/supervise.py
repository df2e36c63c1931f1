"""A runit-style supervisor for one program: ``python -m lab.supervise --state F -- ARGV...``.

Why: calico-node's image runs its daemons under runit (``runsv``), so a killed felix or bird
comes back by itself. The ``tabby/node`` lab image does the same for the agent: this process
runs it, and when it exits for any reason other than our own stop, starts it again after a
bounded backoff (``--backoff`` seconds, doubled per quick failure up to ``--max-backoff``; back to
the minimum once the program stayed up ``--reset-after`` seconds). Standard library only: the
lab starts it as a program.

The program dies with the supervisor (PR_SET_PDEATHSIG), as a container's processes die with its
init. Signals: SIGTERM/SIGINT stop the program (SIGTERM, then SIGKILL after ``--stop-timeout``) and
exit; SIGHUP restarts it now (``tabbyctl lab restart``). The state file (JSON, rewritten on every
change) holds ``restarts``, ``pid``, ``last_exit`` and ``started_at``; ``lab inspect`` shows
the restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, sort_keys=True))
    tmp.replace(path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The supervisor's state file, or None when absent/unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _say(message: str) -> None:
    print(f"supervise: {message}", file=sys.stderr, flush=True)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervisor dies (PR_SET_PDEATHSIG), as a container's processes die
    with its init: killing the node's recorded process must take the agent with it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _after_restart(argv: list[str], timeout: float = 15.0) -> None:
    """Run ``argv`` until it succeeds (bounded): what the image does at start that a restarted
    daemon needs again (FRR: ``vtysh -f frr.conf`` once the daemon's vty answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=timeout).returncode
        except (OSError, subprocess.TimeoutExpired):
            code = -1
        if code == 0 or time.monotonic() > deadline:
            if code != 0:
                _say(f"after-restart command {' '.join(argv)} still failing after {timeout:.0f}s")
            return
        time.sleep(0.3)


def supervise(argv: list[str], state_path: Path, *, backoff: float, max_backoff: float, reset_after: float,
              stop_timeout: float, policy: str = "always", after_restart: list[str] | None = None,
              max_retries: int = 0) -> int:
    """``policy`` is Docker's restart policy as containerlab passes it: ``always`` / ``unless-stopped``
    restart whatever the exit, ``on-failure`` only after a non-zero exit or a signal, and with
    ``max_retries`` N (``on-failure:N``) at most N times: Docker counts every restart, however long
    the run before it, and stops for good at N (this supervisor then ends, like the exit-0 case); a
    requested restart before that (SIGHUP, ``lab restart``, as ``docker restart``) starts the count
    again. 0 = no limit."""
    stopping = False
    restart_now = False

    def on_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(_signum: int, _frame: object) -> None:
        nonlocal restart_now
        restart_now = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    state: dict[str, Any] = {"argv": argv, "restarts": 0, "pid": None, "last_exit": None, "started_at": None,
                             "supervisor_pid": os.getpid()}
    state["policy"] = policy
    if policy == "on-failure" and max_retries:
        state["max_retries"] = max_retries
    retries = 0  # restarts counted against max_retries
    delay = backoff
    first = True
    while not stopping:
        proc = subprocess.Popen(argv, preexec_fn=_die_with_parent)  # the supervisor is single-threaded
        started = time.monotonic()
        state.update(pid=proc.pid, started_at=time.time())
        _write_state(state_path, state)
        if not first and after_restart:
            _after_restart(after_restart)
        first = False
        code: int | None = None
        while code is None:
            try:
                code = proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                code = None
            if code is None and (stopping or restart_now):
                _stop(proc, stop_timeout)
                code = proc.returncode
        state.update(pid=None, last_exit=_describe(code))
        _write_state(state_path, state)
        if stopping:
            break
        if restart_now:
            restart_now = False
            delay = backoff
            retries = 0
            _say(f"{argv[0]} restarted on request ({_describe(code)})")
        elif policy == "on-failure" and code == 0:
            _say(f"{' '.join(argv[:3])} ended ({_describe(code)}); not restarted (restart-policy on-failure)")
            break
        elif policy == "on-failure" and max_retries and retries >= max_retries:
            _say(f"{' '.join(argv[:3])} ended ({_describe(code)}); not restarted: restart-policy "
                 f"on-failure:{max_retries} used all {max_retries} restarts")
            state["gave_up"] = True
            _write_state(state_path, state)
            break
        else:
            if time.monotonic() - started >= reset_after:
                delay = backoff
            _say(f"{' '.join(argv[:3])} ended ({_describe(code)}); restarting in {delay:.1f}s")
            end = time.monotonic() + delay
            while time.monotonic() < end and not stopping and not restart_now:
                time.sleep(0.05)
            restart_now = False
            delay = min(delay * 2, max_backoff)
            retries += 1
        if stopping:
            break
        state["restarts"] += 1
    _say("stopped")
    return 0


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path, help="JSON state file (restarts, pid, last exit)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first restart delay, seconds (runit: 1)")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest restart delay, seconds")
    parser.add_argument("--reset-after", type=float, default=60.0,
                        help="a run this long resets the delay to --backoff")
    parser.add_argument("--stop-timeout", type=float, default=10.0, help="SIGTERM -> SIGKILL after this long")
    parser.add_argument("--policy", choices=("always", "unless-stopped", "on-failure"), default="always",
                        help="Docker's restart policy (on-failure: not after exit code 0)")
    parser.add_argument("--max-retries", type=int, default=0,
                        help="on-failure: at most this many restarts (Docker's on-failure:N; 0 = no limit)")
    parser.add_argument("--after-restart", default="",
                        help="a command run (retried, up to 15 s) after each restart, e.g. re-applying a config")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("give the program to supervise after --")
    if ns.max_retries < 0:
        parser.error("--max-retries must be 0 (no limit) or more")
    if not 0 < ns.backoff <= ns.max_backoff:
        parser.error("--backoff must be more than 0 and at most --max-backoff")
    import shlex

    return supervise(argv, ns.state, backoff=ns.backoff, max_backoff=ns.max_backoff, reset_after=ns.reset_after,
                     stop_timeout=ns.stop_timeout, policy=ns.policy, max_retries=ns.max_retries,
                     after_restart=shlex.split(ns.after_restart) if ns.after_restart else None)


if __name__ == "__main__":
    sys.exit(main())
