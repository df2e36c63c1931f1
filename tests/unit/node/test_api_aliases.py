"""Dangling by-netns links left by a killed agent are removed by the next agent's API start."""

from __future__ import annotations

from pathlib import Path

from controller.node.api import prune_dangling_aliases


def test_dangling_links_are_pruned_live_ones_kept(tmp_path: Path) -> None:
    live_sock = tmp_path / "live.sock.target"
    live_sock.write_text("")
    live = tmp_path / "111.sock"
    live.symlink_to(live_sock)
    dead = tmp_path / "222.sock"
    dead.symlink_to(tmp_path / "gone" / "agent.sock")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert prune_dangling_aliases(tmp_path) == [dead]
    assert live.is_symlink() and not dead.is_symlink() and other.exists()
