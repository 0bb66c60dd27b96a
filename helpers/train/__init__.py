"""Building the zoo (maintainer-only): reproducible training and measured model cards.

    python -m helpers.train <model> [--quick] [--threads 1]      train, measure, checksum
    python -m helpers.train.card helpers/assets/<model>           measure again, write the card

    core.py              the shared training core: a `Run` (accelerate, seed, work folder,
                         loss log, train_info.json, publish), the optimizer step with EMA,
                         the lr schedule, tiny-sd's frozen parts and encoded data for models
                         built on it, hardware/versions; the cards' shared pieces
    tiny_sd.py           tiny-sd: config, build, train, measure, card
    tiny_controlnet.py   tiny-controlnet: the same five, on tiny-sd
    tiny_dit.py          tiny-dit: the same five, on tiny-sd (architecture in helpers.dit)
    registry.py          name -> module; a new model is one module and one line there
    cli.py, card.py      the two commands

Labs never import this package: what they use from the models' code (FLOP counting,
ControlNet accuracy, the DiT architecture, q_sample) lives in helpers.evaluate, helpers.dit
and helpers.diffusion.
"""
