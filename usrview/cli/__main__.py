"""``python -m usrview.cli``: the ``usrview`` command."""

import os
import sys

if os.environ.get("USRVIEW_ROOT_WATCH") and "initrd-mount" in sys.argv[1:]:
    # the initrd's daemon: its priority raised at the root's mount (initrd-mount stops the watch)
    from usrview.boot import rootwatch

    rootwatch.start(os.environ["USRVIEW_ROOT_WATCH"])

if os.environ.get("USRVIEW_CODE_CACHE"):  # the initrd's daemon: generated code compiled ahead
    from usrview.boot import codecache

    codecache.start(os.environ["USRVIEW_CODE_CACHE"])

from usrview.cli.main import entry_point  # noqa: E402

entry_point()
