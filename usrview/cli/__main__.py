"""``python -m usrview.cli``: the ``usrview`` command."""

from usrview.cli.main import entry_point

entry_point()
