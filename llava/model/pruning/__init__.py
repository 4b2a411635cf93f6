"""The pruning methods: interfaces (`base`), spec strings (`spec`), the registry (`registry`), one module per method.

Importing the package registers the built-in methods: each method module registers its class with
`registry.register` as it is imported, and the registry never imports a method module back (no import cycle).
A new method is a new module here, imported below.
"""

from llava.model.pruning import (  # noqa: F401  (registers them)
    baselines, dart, divprune, fastervlm, fastv, hired, pdrop, prumerge, sparsevlm, visionzip, vispruner,
)
