"""The command line: ``followtheleader elect``, ``status`` and ``run``, and their console output."""
