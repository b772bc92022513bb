"""``python -m usrview.cli``: the ``usrview`` command."""

import os

if os.environ.get("USRVIEW_CODE_CACHE"):  # the initrd's daemon: generated code compiled ahead
    from usrview.boot import codecache

    codecache.start(os.environ["USRVIEW_CODE_CACHE"])

from usrview.cli.main import entry_point  # noqa: E402

entry_point()
