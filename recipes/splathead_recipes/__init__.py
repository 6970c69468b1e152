"""What every recipe in ``recipes/`` shares: one training loop and the parts it is made of.

A recipe script (``python recipes/x.py`` or ``torchrun recipes/x.py``) finds this package beside
itself, because Python puts the script's folder first on ``sys.path``; the tests get it through
pytest's ``pythonpath`` setting.

- :mod:`.config`: the pretraining :class:`~.config.Config`, presets, command line, validation
- :mod:`.models`: the model-factory registry, building a model, loading one from a checkpoint
- :mod:`.data`: datasets and the resumable loader of :class:`~.data.Batch` es
- :mod:`.crops`: the training and evaluation crops (uint8, seeded per sample) and normalisation
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
- :mod:`.checkpoint`, :mod:`.distributed`, :mod:`.logs`: files, process groups, metrics
"""
