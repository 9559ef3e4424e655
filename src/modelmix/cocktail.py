"""The public LM-Cocktail names at their original address (``modelmix.cocktail.compute_weights``); the code
lives in :mod:`modelmix.weighting.cocktail`."""

from modelmix.weighting.cocktail import CocktailWeights, compute_weights, merge_with_weights, mix, recipe

__all__ = ["CocktailWeights", "compute_weights", "merge_with_weights", "mix", "recipe"]
