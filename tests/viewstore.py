"""A store holding one deployed image, made with the real importer, for the view's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from usrview import images
from usrview.cli._common import load_keyring
from usrview.store import Store


def deploy_store(root: Path, rpms, key) -> tuple[Store, images.Image]:
    """Deploy ``rpms`` (signed by ``key``, a tests.rpmbuild.GpgKey) into a new store
    at ``root``; return the store and the (current) image."""
    source = root.parent / (root.name + "-source")
    source.mkdir(parents=True)
    for rpm in rpms:
        shutil.copy2(rpm, source / Path(rpm).name)
    store = Store.open(root, create=True)
    result = images.deploy(store, source, load_keyring([key.public_path]))
    return store, result.image
