"""The view room: the composed tree (:mod:`~usrview.view.tree`), the compiled tree
(:mod:`~usrview.view.compiled`, served mapped by :mod:`~usrview.view.ctree`), the
on-access guard (:mod:`~usrview.view.guard`), the pyfuse3 adapter
(:mod:`~usrview.view.fs`) and the mount lifecycle (:mod:`~usrview.view.mount`)."""
