"""``python -m rig``: the ``rig`` command."""

from .cli import main

main()
