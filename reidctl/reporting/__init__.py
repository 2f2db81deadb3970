"""What the user reads about finished work: ``report`` (a run's curves and tables) and
``inspection`` (what an artifact, checkpoint, export or run file holds)."""
