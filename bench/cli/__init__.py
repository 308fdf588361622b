"""The ``bench`` command line: the command group and one module per command (``cmd_<name>``), with the click parameter types they share."""
