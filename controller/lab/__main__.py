"""``python -m controller.lab ...``: the ``tabbyctl lab`` group on its own (tests drive it this way)."""

from controller.lab.cli import lab

if __name__ == "__main__":
    lab(prog_name="tabbyctl lab")
