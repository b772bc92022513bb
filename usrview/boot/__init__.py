"""The boot room: what usrview does when a machine boots with the view as its /usr.

- :mod:`usrview.boot.cmdline`: the kernel command line's ``usrview.*`` words.
- The images' boot states (on trial, good, bad) and the fallback events live with the
  image records, in :mod:`usrview.images.bootstate` (``STORE/boot.json``): deploy,
  rollback, gc, status and the monitor use them, and those rooms may not import this one.
- :mod:`usrview.boot.select`: which image a boot serves (boot counting and fallback).
- :mod:`usrview.boot.codecache`: the code its imports generate, compiled with the initrd.
- :mod:`usrview.boot.rootdaemon`: what the daemon does before READY so that after
  switch-root it never needs a file (systemd's rules for root-storage daemons).

docs/boot-core.md describes it all.
"""
