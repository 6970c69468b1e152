"""What every recipe in ``recipes/`` shares: one training loop and the parts it is made of.

It is the ``splathead-recipes`` distribution (``recipes/pyproject.toml``; ``make`` installs it
beside splathead, editable): what only the recipes need, the partial JPEG decoder
``splathead_recipes._jpeg`` included, stays out of the core library. A recipe script
(``python recipes/x.py`` or ``torchrun recipes/x.py``) also finds it beside itself.

- :mod:`.settings`: :class:`~.settings.RunConfig`, the settings every recipe shares and their
  checks; :mod:`.cli`: a command line derived from a config dataclass
- :mod:`.config`: the pretraining :class:`~.config.Config`, presets, command line, validation
- :mod:`.models`: the model-factory registry, building a model, loading one from a checkpoint
- :mod:`.data`: the :class:`~.data.Crop` protocol, datasets and the resumable loader of
  :class:`~.data.Batch` es
- :mod:`.crops`: the training and evaluation crops (uint8, seeded per sample; the training
  crop's JPEG decode strategies) and normalisation
- :mod:`.optim`: AdamW parameter groups and the warmup + cosine learning rate
- :mod:`.train_step`: one optimiser step (:class:`~.train_step.TrainStep`)
- :mod:`.eval_step`: metrics over a loader, summed over ranks (:func:`~.eval_step.evaluate`)
- :mod:`.loop`: :func:`~.loop.fit`, the loop with checkpoints, resume, signals, logging, hooks
  and evaluations
- :mod:`.pretrain_eval`: what pretraining evaluates: online probes, fixed-mask reconstruction
- :mod:`.encoders`: the evaluation recipes' encoder (pretraining checkpoint, export, or none)
  and its classifier head
- :mod:`.classify`: what the linear-probe and fine-tune recipes share: their settings, the
  labelled data, top-1 / top-5 evaluation, training and the ``top1=... top5=...`` last line
- :mod:`.checkpoint`: checkpoint files and the :class:`~.checkpoint.Checkpointer` that saves
  and restores a run
- :mod:`.bsds`: the BSDS500 boundary benchmark; :mod:`.shapes_task`: the labelled shapes task
- :mod:`.distributed`, :mod:`.logs`: process groups, metrics
"""
