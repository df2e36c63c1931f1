"""``python -m lab ...``: the ``tabbyctl lab`` group on its own (tests drive it this way)."""

from lab.cli import lab

if __name__ == "__main__":
    lab(prog_name="tabbyctl lab")
