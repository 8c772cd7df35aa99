"""``python -m steerscreen``: the same command line as the ``steerscreen`` script."""

from steerscreen.cli import app

app(prog_name="steerscreen")
