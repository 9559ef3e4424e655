"""Weighting: choose how much of each model goes into a merge, by scoring candidates in memory.

* :mod:`~modelmix.weighting.soup`: uniform and greedy model soups (Wortsman et al. 2022);
* :mod:`~modelmix.weighting.cocktail`: LM-Cocktail weights ``softmax(-loss / T)`` from a few examples,
  per model or per layer group (also at ``modelmix.cocktail``);
* :mod:`~modelmix.weighting.lmc`: the loss along the straight line between two models (LMC barrier);
* :mod:`~modelmix.weighting.cli`: the ``soup``, ``cocktail`` and ``lmc`` commands.

All three score candidates through :class:`modelmix.candidates.Candidates` (models opened once, one
skeleton) and write only the chosen merge, through the streaming engine (``modelmix.merge``). Nothing here
is imported by the engine.
"""
