"""Self-critique by merging (arXiv 2406.07188): RR, RR with an external critic, RR-merge, and their evaluation.

* ``prompts``: the paper's critique and rewrite requests; the prompt files ``critique run`` reads.
* ``chat``: the models a run talks to (local directories, batched; OpenAI-compatible servers), on the
  router's backends, with the cost of every call.
* ``strategies``: the four defences as conversations (one batched call per turn).
* ``merge``: RR-merge's model (the model and the critic merged linearly, in memory or cached on disk).
* ``run``: what ``critique run`` does; ``metrics``: what ``critique eval`` reports (ASR, over-refusal,
  helpfulness, cost, bootstrap CIs); ``guard``: what judges an answer unsafe.
* ``miniature`` and ``bench``: the miniature replication on the smol zoo.
"""

from modelmix.critique.prompts import CRITIQUE_PROMPT, REWRITE_PROMPT, Prompt, load_prompts
from modelmix.critique.strategies import STRATEGIES, converse

__all__ = ["CRITIQUE_PROMPT", "REWRITE_PROMPT", "STRATEGIES", "Prompt", "converse", "load_prompts"]
