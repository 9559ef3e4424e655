"""What a merged model directory holds besides its weights: config.json, the tokenizer and generation files
copied from the tokenizer source, a chat template when the recipe names one, and a model card whose recipe
rebuilds the model. Written by ``modelmix.merge`` into the writer's temporary directory before the rename."""

from __future__ import annotations

import json
from pathlib import Path

from modelmix.errors import InputError
from modelmix.io.outputs import os_error

# files copied next to the merged weights (tokenizer, generation config, sentence-transformers modules)
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
)
AUX_DIRS_PREFIX = ("1_Pooling", "2_Normalize", "2_Dense", "3_Normalize")
CHAT_TEMPLATES = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
}


def aux_sources(mp) -> list[Path]:
    """Files and directories copied from the tokenizer source next to the merged weights."""
    src = mp.tokenizer_dir
    if src is None:
        return []
    try:
        out = [src / name for name in AUX_FILES if (src / name).is_file()]
        out += [d for d in sorted(src.iterdir()) if d.is_dir() and d.name.startswith(AUX_DIRS_PREFIX)]
    except OSError as e:
        raise InputError(f"Cannot list the tokenizer source {src}: {e.strerror or e}.") from None
    return out


def aux_bytes(mp) -> int:
    """Bytes of the aux files (for the free-space check), plus slack for config.json and the model card."""
    total = 64 * 1024
    for p in aux_sources(mp):
        try:
            total += p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        except OSError:
            pass
    return total


def write_aux(mp, path, target: Path, seed: int | None = None) -> None:
    """config.json, tokenizer + generation config from the tokenizer source, and a model card.

    A source that cannot be read is an InputError naming it; a failed write (disk full) is an OutputError
    naming the file in the output location ``target``, never the input it was copied from. The card's
    recipe records the seed the merge ran with (``--seed`` overrides the recipe's ``random_seed``), so the
    model can be rebuilt from it.
    """

    cfg = mp.config

    def copy(src: Path, rel: str) -> None:
        try:
            data = src.read_bytes()
        except OSError as e:
            raise InputError(f"Cannot read {src} (copied from the tokenizer source): {e.strerror or e}.") from None
        put(rel, data)

    def put(rel: str, data: bytes | str) -> None:
        try:
            dst = path(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data.encode() if isinstance(data, str) else data)
        except OSError as e:
            raise os_error(e, target / rel, what="the merged model's file") from None

    if mp.out_config:
        put("config.json", json.dumps(mp.out_config, indent=2) + "\n")
    src = mp.tokenizer_dir
    for f in aux_sources(mp):
        if f.is_dir():
            for g in sorted(f.rglob("*")):
                if g.is_file():
                    copy(g, str(g.relative_to(src)))
        else:
            copy(f, f.name)
    if cfg.chat_template:
        template = CHAT_TEMPLATES.get(cfg.chat_template, cfg.chat_template)
        tc = path("tokenizer_config.json")
        data = json.loads(tc.read_text()) if tc.is_file() else {}
        data["chat_template"] = template
        put("tokenizer_config.json", json.dumps(data, indent=2) + "\n")
    models = "\n".join(f"- {k}" for k in mp.models)
    if seed is not None and seed != cfg.random_seed:
        cfg = cfg.model_copy(update={"random_seed": seed})
    put("README.md",
        "---\ntags:\n- modelmix\n- merge\n---\n"
        f"# Merged model\n\nThis model was merged with modelmix using the `{cfg.merge_method}` method.\n\n"
        f"## Models merged\n\n{models}\n\n## Recipe\n\n```yaml\n{cfg.to_yaml()}```\n")


def has_chat_template(path: str | Path) -> bool:
    """Whether a model directory's tokenizer carries a chat template (``chat_template`` in
    tokenizer_config.json, or transformers' chat_template.jinja / chat_template.json files): without one a
    model sees only the last user message, so it cannot answer about an earlier turn of a conversation."""
    d = Path(path)
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    try:
        cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(cfg, dict) and cfg.get("chat_template"))
