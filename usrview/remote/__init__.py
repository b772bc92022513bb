"""The remote room: images from a web server.  The repository layout and the
signed image index (:mod:`usrview.remote.index`), ``publish``
(:mod:`usrview.remote.publish`), HTTP done as a fleet needs it
(:mod:`usrview.remote.http`) and ``pull`` (:mod:`usrview.remote.pull`)."""
