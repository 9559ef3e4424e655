"""Model zoo, offline and deterministic, to exercise merging: small models trained from scratch (`test`,
`default`) and fine-tunes of a real pretrained chat model (`smol`).

``build_zoo(out, preset, seed)`` trains/caches the zoo; ``load_zoo(dir)`` reads its ``zoo.json``. Importing
this package does not import torch or transformers.
"""

from modelmix.zoo.build import RECIPE_VERSION, build_zoo, cache_root, cached_zoo_path
from modelmix.zoo.manifest import Zoo, load_zoo

__all__ = ["RECIPE_VERSION", "Zoo", "build_zoo", "cache_root", "cached_zoo_path", "load_zoo"]
