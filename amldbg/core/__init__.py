"""amldbg's core: what every other part reads, fed by the standard library only.

* :mod:`.settings`: the flag table, one parser per value type, the immutable settings
  objects and the settings the process was enabled with;
* :mod:`.args`: the ``--remote_debug*`` flags on an ``argparse`` parser;
* :mod:`.environment`: the Azure ML job, the process topology and this node's address;
* :mod:`.runtime`: the runtime that calls the script (inference server, parallel job);
* :mod:`.announce`: the lines written to the driver log, and warn-once;
* :mod:`.guard`: the one guard that keeps amldbg's own failures out of the host script;
* :mod:`.secrets`: the masking rules for everything amldbg writes (names, value shapes),
  and files created 0600;
* :mod:`.vscode`: VS Code launch.json entry builders.

Nothing in this package imports any other part of amldbg (a test reads the imports).
"""
