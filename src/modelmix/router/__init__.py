"""The router: send each query to the right model or models, and learn from feedback.

``Router.from_config(path)`` validates the config (``router.config``), loads the encoder only (never the
generation models, for classification), embeds the routes' utterances and calibrates the intent
distribution on them (``router.classifier``); ``Router.route(query)`` gives the :class:`Decision`
(``router.decide``: strategy, models, weights and the reason).
"""

from __future__ import annotations

from modelmix.router.core import Router

__all__ = ["Router"]
