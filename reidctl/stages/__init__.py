"""The stages, one module each: a request (what to read, the model, the runtime, the stage's
parameters) and a ``run_*`` function that writes the stage's artifact and returns its summary.

``extract`` (images → features.h5), ``cluster`` (features → labels.h5), ``refine`` (labels →
refined.h5, the method's label refinement), ``train_epoch`` (refined labels → model.pt),
``evaluate`` (a model or features → mAP/CMC), ``rank`` (query × gallery → a ranking). The CLI's
single-stage commands and the ``loop`` (:mod:`reidctl.pipeline.loop`) call these functions; the
stages call the methods, models, clustering and data packages below them.
"""
