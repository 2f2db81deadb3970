"""The ``loop``: the stages epoch after epoch in a run folder (``loop``), the folder's cache,
lock and log (``rundir``) and its saved configuration (``configfile``)."""
