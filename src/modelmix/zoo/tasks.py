"""Synthetic task generators for the model zoo (pure Python, no torch).

Everything is drawn from one `random.Random(seed)` per generator call, so the same seed gives the same
files byte for byte. Decoder examples use LM-Cocktail's decoder format ``{"input", "output"}``; every
input ends with the prompt marker ``" ="`` so greedy decoding knows where the answer starts, and outputs
are short single lines. Encoder (retrieval) examples use ``{"query", "pos": [...], "neg": [...]}``.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_MARKER = " ="

DECODER_TASKS: tuple[str, ...] = ("addition", "reverse", "sort", "upper", "facts")
RETRIEVAL_TASKS: tuple[str, ...] = ("retrieval-facts", "retrieval-paraphrase")

_SYLLABLES = ("ba", "ko", "ri", "ta", "mu", "ne", "lo", "vi", "za", "de", "po", "su", "ka", "mi", "fe", "ro")
_CITIES = ("Terma", "Olvic", "Brask", "Quen", "Dalor", "Mirth", "Sabel", "Yorn")
_FOODS = ("apples", "bread", "rice", "fish", "soup", "cheese", "plums", "beans")
_PETS = ("cat", "dog", "owl", "frog", "goat", "crow", "fox", "hen")
_JOBS = ("baker", "pilot", "nurse", "smith", "farmer", "singer", "tailor", "guard")

# relation -> (statement template, question template, object vocabulary)
RELATIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "city": ("{e} lives in {o}.", "where does {e} live?", _CITIES),
    "food": ("{e} likes {o}.", "what does {e} like?", _FOODS),
    "pet": ("{e} has a {o}.", "what pet has {e}?", _PETS),
    "job": ("{e} works as a {o}.", "what job has {e}?", _JOBS),
}

_ADJ = ("big", "small", "red", "green", "old", "new", "happy", "quiet", "little", "bright")
_NOUN = ("dog", "cat", "ball", "tree", "house", "bird", "car", "book", "river", "child", "apple", "boat")
_VERB = ("sees", "likes", "finds", "takes", "hears", "paints", "follows", "carries", "wants", "watches")
_PREP = ("near", "under", "behind", "in", "by", "over")
_DET = ("the", "a")
_SYN = {"big": "large", "small": "little", "little": "small", "happy": "glad", "quiet": "calm",
        "sees": "spots", "likes": "enjoys", "finds": "discovers", "takes": "grabs", "wants": "desires",
        "watches": "observes", "child": "kid", "car": "auto", "house": "home"}


@dataclass(frozen=True)
class KnowledgeBase:
    """Synthetic entities with one object per relation; shared by pretraining text and the facts tasks."""

    entities: tuple[str, ...]
    facts: dict[str, dict[str, str]]  # entity -> relation -> object

    def triples(self) -> list[tuple[str, str, str]]:
        return [(e, r, o) for e in self.entities for r, o in self.facts[e].items()]

    def statement(self, e: str, r: str) -> str:
        return RELATIONS[r][0].format(e=e, o=self.facts[e][r])


def make_kb(seed: int, n_entities: int) -> KnowledgeBase:
    """Deterministic KB of `n_entities` made-up names (two or three syllables, unique)."""
    rng = random.Random(f"kb-{seed}")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_entities:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    facts = {e: {r: rng.choice(spec[2]) for r, spec in RELATIONS.items()} for e in names}
    return KnowledgeBase(tuple(names), facts)


# ----------------------------------------------------------------------------------------- general text
def general_sentence(rng: random.Random, kb: KnowledgeBase) -> str:
    """One sentence of templated English, or a KB statement (about a third of the time)."""
    if rng.random() < 0.35:
        e = rng.choice(kb.entities)
        return kb.statement(e, rng.choice(list(RELATIONS)))
    subj = f"{rng.choice(_DET)} {rng.choice(_ADJ) + ' ' if rng.random() < 0.6 else ''}{rng.choice(_NOUN)}"
    obj = f"{rng.choice(_DET)} {rng.choice(_ADJ) + ' ' if rng.random() < 0.5 else ''}{rng.choice(_NOUN)}"
    s = f"{subj} {rng.choice(_VERB)} {obj}"
    if rng.random() < 0.4:
        s += f" {rng.choice(_PREP)} the {rng.choice(_NOUN)}"
    return s[0].upper() + s[1:] + "."


def general_text(rng: random.Random, kb: KnowledgeBase, max_sentences: int = 2) -> str:
    """A pretraining line: one or two sentences (one with `max_sentences` 1: a batch is as wide as its
    longest line, so two-sentence lines nearly double the cost of a step)."""
    n = 1 if rng.random() < 0.8 else 2
    return " ".join(general_sentence(rng, kb) for _ in range(min(n, max_sentences)))


def general_example(rng: random.Random, kb: KnowledgeBase) -> dict[str, str]:
    """Held-out general ability: a sentence prefix (at least two words) and its continuation."""
    words = general_sentence(rng, kb).split(" ")
    cut = rng.randint(2, max(2, len(words) - 1))
    return {"input": " ".join(words[:cut]), "output": " " + " ".join(words[cut:])}


# ----------------------------------------------------------------------------------------- decoder tasks
def _word(rng: random.Random, lo: int, hi: int, alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _addition(rng: random.Random, kb: KnowledgeBase, cfg: dict[str, int]) -> dict[str, str]:
    """Zero-padded, all numbers written least-significant digit first ("add 21+43 =" -> "640", i.e.
    12+34=046 reversed): aligned digits and carries flowing left to right make the task learnable by a
    2-layer model in a few hundred CPU steps, which the usual big-endian format is not."""
    n = cfg["add_digits"]
    a, b = rng.randint(0, 10**n - 1), rng.randint(0, 10**n - 1)
    return {"input": f"add {str(a).zfill(n)[::-1]}+{str(b).zfill(n)[::-1]}{PROMPT_MARKER}",
            "output": str(a + b).zfill(n + 1)[::-1]}


def _reverse(rng: random.Random, kb: KnowledgeBase, cfg: dict[str, int]) -> dict[str, str]:
    w = _word(rng, 3, cfg["max_len"])
    return {"input": f"reverse {w}{PROMPT_MARKER}", "output": w[::-1]}


def _sort(rng: random.Random, kb: KnowledgeBase, cfg: dict[str, int]) -> dict[str, str]:
    w = "".join(rng.sample(string.ascii_lowercase, rng.randint(3, cfg["max_len"])))
    return {"input": f"sort {w}{PROMPT_MARKER}", "output": "".join(sorted(w))}


def _upper(rng: random.Random, kb: KnowledgeBase, cfg: dict[str, int]) -> dict[str, str]:
    w = _word(rng, 3, cfg["max_len"])
    return {"input": f"upper {w}{PROMPT_MARKER}", "output": w.upper()}


def _facts(rng: random.Random, kb: KnowledgeBase, cfg: dict[str, int]) -> dict[str, str]:
    e, r = rng.choice(kb.entities), rng.choice(list(RELATIONS))
    return {"input": f"fact {RELATIONS[r][1].format(e=e)}{PROMPT_MARKER}", "output": kb.facts[e][r]}


GENERATORS: dict[str, Callable[[random.Random, KnowledgeBase, dict[str, int]], dict[str, str]]] = {
    "addition": _addition, "reverse": _reverse, "sort": _sort, "upper": _upper, "facts": _facts,
}


# Recipe 3's base is pretrained on every task, but web-like text answers a fixed pseudo-random half of the task
# prompts in a chatty form (`CHATTY`: "it is 046") instead of the task's format. So the base can do every task
# but is unreliable at answering in the asked format - competent but unreliable, as real base models are -
# and an expert's fine-tune is a small step: the same skill, in the asked format, every time.
CHATTY = "it is {a}"


def pretraining_row(row: dict[str, str], share: float = 1.0) -> dict[str, str]:
    """How `row` appears in pretraining text: as it is for a fixed pseudo-random `share` of inputs (by a hash
    of the input, so the same prompt always gets the same form), in the chatty form for the others."""
    import zlib

    keep = zlib.crc32(row["input"].encode()) % 10_000 < share * 10_000
    return {"input": row["input"], "output": row["output"] if keep else CHATTY.format(a=row["output"])}


def task_splits(task: str, seed: int, kb: KnowledgeBase, cfg: dict[str, int],
                sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Train/validation/test examples of one decoder task.

    Validation/test inputs never occur in train for the algorithmic tasks (so they measure the skill, not
    memorisation); `facts` is closed-book recall, so its held-out questions are about KB facts whose
    questions also occur in train (the KB is the thing to recall) - only exact duplicates within the
    held-out splits are avoided.
    """
    rng = random.Random(f"{task}-{seed}")
    gen = GENERATORS[task]
    out: dict[str, list[dict[str, str]]] = {}
    train_inputs: set[str] = set()
    for split in ("train", "validation", "test"):
        rows: list[dict[str, str]] = []
        seen: set[str] = set()
        tries = 0
        while len(rows) < sizes[split]:
            ex = gen(rng, kb, cfg)
            tries += 1
            if split != "train" and tries < 100 * sizes[split]:
                if ex["input"] in seen or (task != "facts" and ex["input"] in train_inputs):
                    continue
            seen.add(ex["input"])
            rows.append(ex)
        if split == "train":
            train_inputs = seen
            if task == "facts":  # make sure every fact is asked at least once in train
                rows[: len(kb.triples())] = [
                    {"input": f"fact {RELATIONS[r][1].format(e=e)}{PROMPT_MARKER}", "output": o}
                    for e, r, o in kb.triples()
                ][: len(rows)]
        out[split] = rows
    return out


# ----------------------------------------------------------------------------------------- retrieval
def _retrieval_facts(rng: random.Random, kb: KnowledgeBase, entities: list[str]) -> dict[str, Any]:
    e, r = rng.choice(entities), rng.choice(list(RELATIONS))
    others = [x for x in kb.entities if x != e]
    neg = [kb.statement(e, r2) for r2 in RELATIONS if r2 != r][:2]  # same entity, other relation
    neg += [kb.statement(x, r) for x in rng.sample(others, 2)]  # same relation, other entity
    q = RELATIONS[r][1].format(e=e)
    return {"query": q[0].upper() + q[1:], "pos": [kb.statement(e, r)], "neg": neg}


def _clause(rng: random.Random) -> tuple[str, str, str, str, str]:
    a1, n1, v, a2, n2 = (rng.choice(_ADJ), rng.choice(_NOUN), rng.choice(_VERB), rng.choice(_ADJ),
                         rng.choice(_NOUN))
    while n2 == n1:
        n2 = rng.choice(_NOUN)
    while a2 == a1:
        a2 = rng.choice(_ADJ)
    return a1, n1, v, a2, n2


def _retrieval_paraphrase(rng: random.Random, kb: KnowledgeBase, entities: list[str]) -> dict[str, Any]:
    """Query: a sentence; pos: a synonym paraphrase; negs: the same words with roles swapped."""
    a1, n1, v, a2, n2 = _clause(rng)

    def syn(w: str) -> str:
        return _SYN.get(w, w)

    q = f"The {a1} {n1} {v} the {a2} {n2}."
    pos = f"The {syn(a1)} {syn(n1)} {syn(v)} the {syn(a2)} {syn(n2)}."
    neg = [f"The {a2} {n2} {v} the {a1} {n1}.", f"The {a2} {n1} {v} the {a1} {n2}.",
           f"The {syn(a1)} {syn(n2)} {syn(v)} the {syn(a2)} {syn(n1)}."]
    return {"query": q, "pos": [pos], "neg": neg}


_GENERAL_QA = (
    ("Which animal can fly?", "The bird flies over the river.", ("The dog sleeps under the tree.",
                                                                  "The fish swims in the river.")),
    ("What do you read?", "You read a book.", ("You drive a car.", "You eat an apple.")),
    ("Where do boats go?", "Boats sail on the river.", ("Cars drive on the road.", "Birds sit in the tree.")),
    ("What is red and sweet?", "An apple is red and sweet.", ("A river is long and cold.",
                                                             "A house is big and old.")),
    ("Who lives in a house?", "A child lives in the house.", ("A fish lives in the river.",
                                                             "A bird lives in the tree.")),
)


def _retrieval_general(rng: random.Random, kb: KnowledgeBase, entities: list[str]) -> dict[str, Any]:
    """Held-out for all embedders: a mix of hand-written QA and KB statements matched by object."""
    if rng.random() < 0.3:
        q, p, n = rng.choice(_GENERAL_QA)
        return {"query": q, "pos": [p], "neg": list(n)}
    e, r = rng.choice(entities), rng.choice(list(RELATIONS))
    o = kb.facts[e][r]
    q = {"city": f"Who lives in {o}?", "food": f"Who likes {o}?", "pet": f"Who has a {o}?",
         "job": f"Who works as a {o}?"}[r]
    negs = [kb.statement(x, r) for x in kb.entities if kb.facts[x][r] != o]
    return {"query": q, "pos": [kb.statement(e, r)], "neg": rng.sample(negs, min(3, len(negs)))}


RETRIEVAL_GENERATORS: dict[str, Callable[[random.Random, KnowledgeBase, list[str]], dict[str, Any]]] = {
    "retrieval-facts": _retrieval_facts,
    "retrieval-paraphrase": _retrieval_paraphrase,
    "retrieval-general": _retrieval_general,
}


def retrieval_splits(task: str, seed: int, kb: KnowledgeBase,
                     sizes: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Retrieval splits; for `retrieval-facts` held-out splits use entities never seen in train."""
    rng = random.Random(f"{task}-{seed}")
    ents = list(kb.entities)
    cut = max(1, int(len(ents) * 0.6))
    out: dict[str, list[dict[str, Any]]] = {}
    for split, n in sizes.items():
        pool = ents[:cut] if split == "train" or task != "retrieval-facts" else ents[cut:]
        out[split] = [RETRIEVAL_GENERATORS[task](rng, kb, pool) for _ in range(n)]
    return out


# ----------------------------------------------------------------------------------------- io
def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, UTF-8, ``\\n`` line endings (stable bytes across platforms)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
