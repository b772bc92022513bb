"""The command line: one ``main()`` (:mod:`usrview.cli.main`) and one module per
command, each parsing its arguments, calling the domain and printing.  Shared
options and helpers live in :mod:`usrview.cli._common`.  No domain module
imports anything from here."""
