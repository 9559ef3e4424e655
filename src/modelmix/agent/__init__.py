"""The merge agent: decide what to merge, search how, remember every trial, say when routing beats merging."""

from modelmix.agent.core import Agent, AgentResult
from modelmix.agent.space import Recipe
from modelmix.agent.spec import AgentSpec, load_spec, parse_task
from modelmix.agent.store import TrialStore

__all__ = ["Agent", "AgentResult", "AgentSpec", "Recipe", "TrialStore", "load_spec", "parse_task"]
