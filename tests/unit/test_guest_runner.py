"""The guest-kernel runner's pure parts: module load order from modules.dep, result reading, and
the loud failure when a guest gives no result (tests/guest/qemu.py, tests/guest/runner.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.guest.qemu import GuestRun, Kernel, boot_script
from tests.guest.runner import result_of

MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Kernel:
    moddir = tmp_path / "lib" / "modules" / "6.1.0-99-amd64"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(MODULES_DEP)
    return Kernel(tmp_path, "6.1.0-99-amd64")


def test_dependencies_load_first_and_once(kernel: Kernel) -> None:
    order = kernel.load_order(["virtio_pci", "9pnet_virtio", "virtio_rng"])
    names = [Path(p).name for p in order]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko", "9pnet.ko",
                     "9pnet_virtio.ko", "virtio-rng.ko.xz"]


def test_unknown_module_names_itself(kernel: Kernel) -> None:
    with pytest.raises(LookupError, match="module ipip is not in"):
        kernel.load_order(["ipip"])


def test_checkout_under_tmp_is_bound_back(kernel: Kernel) -> None:
    """A CI clone under /tmp must stay visible under the guest's fresh /tmp tmpfs."""
    work = Path(f"/tmp/guest-work-{uuid.uuid4().hex[:8]}")
    work.mkdir(exist_ok=True)
    try:
        text = boot_script(kernel, work, "true", env={}, extra_paths=[Path("/tmp/some-clone")])
    finally:
        (work / "run.sh").unlink(missing_ok=True)
        work.rmdir()
    tmpfs = text.index("mount -t tmpfs -o mode=1777 tmpfs $H/tmp")
    bind = text.index("mount --bind $H/run/host-tmp/some-clone $H/tmp/some-clone")
    share = text.index(f"mount --bind /work $H{work}")
    assert tmpfs < bind < share < text.index("exec chroot $H")


def run_with(tmp_path: Path, console: str, result: dict | None = None) -> GuestRun:
    if result is not None:
        (tmp_path / "result.json").write_text(json.dumps(result))
    return GuestRun(console, False, tmp_path, 12.0, None)


def test_result_file_wins_over_console(tmp_path: Path) -> None:
    run = run_with(tmp_path, 'TABBY-GUEST-RESULT {"error": null, "x": 1}\n', {"error": None, "x": 2})
    assert result_of(run)["x"] == 2


def test_console_result_when_no_file(tmp_path: Path) -> None:
    run = run_with(tmp_path, 'noise\nTABBY-GUEST-RESULT {"error": null, "x": 1}\n')
    assert result_of(run)["x"] == 1


def test_no_result_fails_with_last_step_and_console_tail(tmp_path: Path) -> None:
    console = "TABBY-GUEST-STEP agents t=3.0 up=9.1\nKernel panic - not syncing: Attempted to kill init!\n"
    with pytest.raises(AssertionError) as err:
        result_of(run_with(tmp_path, console))
    message = str(err.value)
    assert "last step: agents t=3.0" in message and "Kernel panic" in message


def test_guest_error_is_reported(tmp_path: Path) -> None:
    run = run_with(tmp_path, "", {"error": "Traceback ... boom"})
    with pytest.raises(AssertionError, match="boom"):
        result_of(run)
