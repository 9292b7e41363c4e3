"""Training recipes for the bundled reference voices (espeak-ng as the teacher).

Each step is a module run with ``python -m``:

- :mod:`addons.recipes.corpus` builds the teacher corpus (sentences, log-mels, phoneme durations);
- :mod:`addons.recipes.fast` trains and exports the duration model (``chorus-fast``);
- :mod:`addons.recipes.taco` trains and exports the attention model (``chorus-taco``);
- :mod:`addons.recipes.evaluate` scores exported voices against the teacher on held-out text.

Every ``main(argv)`` returns an exit code (2 for bad arguments).
"""

__all__: list[str] = []
