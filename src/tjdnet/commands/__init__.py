"""The commands that decode with a trained head — ``test``, ``bench``, ``generate``, ``bench-heads`` and
``bench-plot`` — as functions whose signatures are their command lines. None of them needs Lightning."""
