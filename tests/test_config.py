"""Recipe schema, validation messages and parameter resolution (modelmix.config).

The tests run against the real method registry (`modelmix.methods`), so a declaration the config relies on
(a bound, a scope, a model count) is checked as the product ships it. One toy method, registered only for
the tests that ask for the `toy` fixture, holds the odd parameter kinds those tests need side by side (a
global int and a global string with choices), so they do not hang on which real method happens to have one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelmix.config import ModelRef, layer_t, load_config, parse_dtype
from modelmix.errors import ConfigError, InputError
from modelmix.io.checkpoint import resolve_model_path
from modelmix.methods import registry
from modelmix.methods.registry import Method, Param

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _noop(*_a, **_k):  # pragma: no cover - never called
    raise AssertionError


TOY = Method(
    "toy",
    _noop,
    (
        Param("k", "global", int, default=1),
        Param("mode", "global", str, default="a", choices=("a", "b")),
    ),
)


@pytest.fixture
def toy():
    """The real registry plus the toy method, registered for this test only."""
    assert TOY.name not in _real_methods()
    registry.register(TOY)
    try:
        yield TOY
    finally:
        del registry._REGISTRY[TOY.name]
    assert TOY.name not in _real_methods()


def _real_methods() -> dict[str, Method]:
    return registry.all_methods()  # no try/except: a broken registry fails the tests instead of skipping them


def err(recipe, match: str | list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    msg = str(info.value)
    for m in [match] if isinstance(match, str) else match:
        assert m in msg, msg
    assert "\n" not in msg.strip() and "pydantic" not in msg.lower() and "errors.pydantic" not in msg
    return msg


def ties(**over):
    d = {
        "merge_method": "ties",
        "base_model": "./zoo/base",
        "models": [
            {"model": "./zoo/base"},
            {"model": "./zoo/a", "parameters": {"weight": 0.5, "density": 0.5}},
            {"model": "./zoo/b", "parameters": {"weight": 0.5, "density": 0.7}},
        ],
        "parameters": {"normalize": True},
    }
    d.update(over)
    return d


# ---------------------------------------------------------------------------------------------- parsing


def test_model_ref_forms(tmp_path):
    r = ModelRef.parse("./zoo/a+./zoo/lora")
    assert (r.path, r.lora, str(r)) == ("./zoo/a", "./zoo/lora", "./zoo/a+./zoo/lora")
    assert str(ModelRef.parse("org/name")) == "org/name"
    d = ModelRef.parse({"model": {"path": "./x"}, "lora": "./l", "override_architecture": "LlamaForCausalLM"})
    assert (d.path, d.lora, d.override_architecture) == ("./x", "./l", "LlamaForCausalLM")
    assert ModelRef.parse({"model": "./x"}) == ModelRef("./x")
    with pytest.raises(ValueError, match="cannot parse"):
        ModelRef.parse("a+b+c")
    with pytest.raises(ValueError, match="revisions are not supported"):
        ModelRef.parse({"model": {"path": "org/x", "revision": "main"}})
    # equality ignores where the recipe was, so the same spelling is the same model
    assert ModelRef("./a", base_dir=tmp_path) == ModelRef("./a")


def test_relative_paths_cwd_first_then_recipe_dir(tmp_path, monkeypatch):
    recipe_dir = tmp_path / "recipes"
    (recipe_dir / "zoo" / "a").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    (cwd / "zoo" / "b").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    a, b = ModelRef("./zoo/a", base_dir=recipe_dir), ModelRef("./zoo/b", base_dir=recipe_dir)

    def where(ref: ModelRef) -> Path:  # how the planner and Checkpoint resolve a reference
        return resolve_model_path(ref.path, base_dir=ref.base_dir)

    assert where(a) == (recipe_dir / "zoo" / "a").resolve()
    assert where(b) == (cwd / "zoo" / "b").resolve()
    (cwd / "zoo" / "a").mkdir()
    assert where(a) == (cwd / "zoo" / "a").resolve()  # CWD wins, as in mergekit
    with pytest.raises(InputError) as info:  # neither place has it: the error names both
        where(ModelRef("./nope", base_dir=recipe_dir))
    assert "nope or " in str(info.value) and str(recipe_dir / "nope") in str(info.value)
    assert where(ModelRef(str(tmp_path))) == tmp_path.resolve()


def test_load_from_file_sets_base_dir(tmp_path, monkeypatch):
    (tmp_path / "zoo" / "a").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # found through the recipe's folder only
    f = tmp_path / "r.yml"
    f.write_text("merge_method: linear\nmodels:\n  - model: ./zoo/a\n    parameters: {weight: 1}\n")
    cfg = load_config(f)
    ref = cfg.models[0].model
    assert ref.base_dir == tmp_path.resolve()
    assert resolve_model_path(ref.path, base_dir=ref.base_dir) == (tmp_path / "zoo" / "a").resolve()


def test_models_mode_full(tmp_path):
    cfg = load_config(
        ties(
            dtype="bfloat16",
            out_dtype="float16",
            tokenizer_source="base",
            chat_template="chatml",
            random_seed=7,
            name="my-merge",
        )
    )
    assert cfg.merge_method == "ties" and cfg.method().name == "ties"
    assert cfg.base_model == ModelRef("./zoo/base")
    assert [str(r) for r in cfg.referenced_models()] == ["./zoo/base", "./zoo/a", "./zoo/b"]
    assert cfg.random_seed == 7 and cfg.dtype == "bfloat16" and cfg.chat_template == "chatml"
    assert cfg.tokenizer_model() == ModelRef("./zoo/base")
    assert cfg.slices is None


def test_referenced_models_base_first_and_unique():
    cfg = load_config(
        {
            "merge_method": "ties",
            "base_model": "./b",
            "slices": [
                {
                    "sources": [
                        {"model": "./x", "layer_range": [0, 2]},
                        {"model": "./b", "layer_range": [0, 2]},
                    ]
                },
                {
                    "sources": [
                        {"model": "./y", "layer_range": [2, 4]},
                        {"model": "./b", "layer_range": [2, 4]},
                    ]
                },
            ],
            "parameters": {"weight": 1.0},
        }
    )
    assert [str(r) for r in cfg.referenced_models()] == ["./b", "./x", "./y"]
    assert cfg.slices[1].num_layers == 2


def test_input_models_appends_missing_base_like_mergekit():
    cfg = load_config(
        {
            "merge_method": "ties",
            "base_model": "./base",
            "models": [{"model": "./a", "parameters": {"weight": 1}}],
        }
    )
    assert cfg.input_models() == [ModelRef("./a"), ModelRef("./base")]
    assert cfg.referenced_models() == [ModelRef("./base"), ModelRef("./a")]


def test_yaml_text_and_lora_and_to_yaml_roundtrip():
    text = """
merge_method: slerp
base_model: ./zoo/base
models:
  - model: ./zoo/base
  - model: ./zoo/a+./zoo/a-lora
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - value: 0.5
dtype: float16
"""
    cfg = load_config(text)
    assert cfg.models[1].model.lora == "./zoo/a-lora"
    out = cfg.to_yaml()
    assert "value: [0.0, 0.5, 1.0]" in out and "./zoo/a+./zoo/a-lora" in out
    again = load_config(out)
    assert again.model_dump() == cfg.model_dump()


def test_tokenizer_forms():
    assert load_config(ties(tokenizer={"source": "base"})).tokenizer_source == "base"
    cfg = load_config(ties(tokenizer_source="./zoo/a"))
    assert cfg.tokenizer_model() == ModelRef("./zoo/a")
    cfg = load_config(ties(tokenizer={"source": {"model": "./zoo/b"}}))
    assert cfg.tokenizer_source == "./zoo/b"
    # `base` without a base model: the first referenced model, as mergekit's BuildTokenizer
    lin = {
        "merge_method": "linear",
        "models": [{"model": "./p", "parameters": {"weight": 1}}],
        "tokenizer_source": "base",
    }
    assert load_config(lin).tokenizer_model() == ModelRef("./p")


@pytest.mark.parametrize(
    "over, match",
    [
        ({"tokenizer_source": "union"}, ["tokenizer_source", '"union"', "not supported yet"]),
        ({"tokenizer": {"source": "union"}}, ["tokenizer.source", "not supported yet"]),
        ({"tokenizer": {"tokens": {"<x>": {"source": "./a"}}}}, ["tokenizer.tokens", "not supported"]),
        ({"tokenizer": {}}, ["tokenizer.source", "union"]),  # mergekit's default source is union
        (
            {"tokenizer": {"source": "base", "pad_to_multiple_of": 64}},
            ["pad_to_multiple_of", "not supported"],
        ),
        ({"tokenizer": {"sorce": "base"}}, ["tokenizer.sorce", 'Did you mean "source"?']),
        ({"tokenizer": {"source": "base"}, "tokenizer_source": "base"}, ["both"]),
    ],
)
def test_tokenizer_rejections(over, match):
    err(ties(**over), match)


def test_dtypes():
    import torch

    assert parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("fp32") is torch.float32
    assert parse_dtype("float64") is torch.float64 and parse_dtype(None) is None
    with pytest.raises(ConfigError, match='Did you mean "float16"'):
        parse_dtype("flaot16")
    err(ties(dtype="int8"), ["dtype", '"int8"'])
    err(ties(out_dtype="bfloat61"), ["out_dtype", 'Did you mean "bfloat16"?'])


# ------------------------------------------------------------------------------------------ t / gradients


def test_layer_t_matches_mergekit():
    assert [layer_t(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert layer_t(0, 1) == 1.0  # plan.py: `else: t = 1`
    assert layer_t(None, 32) == 0.0
    with pytest.raises(ValueError):
        layer_t(5, 5)


def test_gradient_interpolation_by_hand():
    cfg = load_config(
        {
            "merge_method": "ties",
            "base_model": "./b",
            "models": [
                {"model": "./b"},
                {"model": "./a", "parameters": {"weight": [0, 0.3, 0.7, 1], "density": [1, 0.7, 0.1]}},
            ],
        }
    )
    a = ModelRef("./a")

    def w(t):
        return cfg.resolve_param("weight", tensor_name="model.layers.0.mlp.up_proj.weight", t=t, model=a)

    # 4 values: scaled = t*3
    assert w(0) == 0.0 and w(1) == 1.0
    assert w(0.5) == pytest.approx(0.5)  # scaled 1.5 -> (0.3+0.7)/2
    assert w(1 / 6) == pytest.approx(0.15)  # scaled 0.5 -> 0.15
    assert w(layer_t(1, 4)) == pytest.approx(0.3)
    assert w(layer_t(2, 4)) == pytest.approx(0.7)
    d = cfg.resolve_param("density", tensor_name="x", t=0.75, model=a)  # scaled 1.5 -> (0.7+0.1)/2
    assert d == pytest.approx(0.4)
    # non-layer tensors use t=0 -> first value
    assert (
        cfg.resolve_param("density", tensor_name="model.embed_tokens.weight", t=layer_t(None, 4), model=a)
        == 1.0
    )
    # the base gets nothing; global params are unset -> None (caller applies defaults)
    assert cfg.resolve_param("weight", tensor_name="x", t=0.5, model=ModelRef("./b")) is None
    assert cfg.resolve_param("normalize", tensor_name="x", t=0.5) is None
    assert cfg.get_param("normalize", tensor_name="x", t=0.5) is True  # ties default


def test_discrete_gradient_for_bool_and_str_params_and_int_coercion(toy):
    cfg = load_config(
        {
            "merge_method": "toy",
            "models": [{"model": "./a"}],
            "parameters": {"mode": ["a", "b", "b"], "k": [1, "4"]},
        }
    )
    r = cfg.resolve_param
    assert [r("mode", tensor_name="x", t=t) for t in (0, 0.49, 0.5, 1)] == ["a", "a", "b", "b"]
    assert r("k", tensor_name="x", t=0) == 1 and r("k", tensor_name="x", t=1) == 4
    assert r("k", tensor_name="x", t=0.5) == 2  # 2.5 rounds to even


def test_scientific_notation_strings_are_numbers():
    # PyYAML reads `1e-3` as a string; mergekit coerces it with the parameter's type
    cfg = load_config("merge_method: linear\nmodels:\n  - model: ./a\n    parameters:\n      weight: 1e-3\n")
    assert cfg.resolve_param("weight", tensor_name="x", t=0, model=ModelRef("./a")) == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------- filters


def test_filters_first_match_wins_and_fallthrough():
    cfg = load_config(
        {
            "merge_method": "slerp",
            "base_model": "./base",
            "models": [{"model": "./base"}, {"model": "./a"}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"filter": "attn", "value": 0.9},  # shadowed for self_attn by the first entry
                    {"value": 0.5},
                ]
            },
        }
    )

    def t_of(name, t):
        return cfg.resolve_param("t", tensor_name=name, t=t)

    assert t_of("model.layers.3.self_attn.q_proj.weight", layer_t(1, 5)) == pytest.approx(0.5)
    assert t_of("model.layers.3.self_attn.q_proj.weight", 0.375) == pytest.approx(0.4)  # scaled 1.5
    assert t_of("model.layers.3.mlp.down_proj.weight", 1.0) == 0.0
    assert t_of("model.layers.3.cross_attn.weight", 0.2) == 0.9
    assert t_of("model.norm.weight", 0.0) == 0.5
    assert t_of("lm_head.weight", 0.0) == 0.5


def test_filter_without_match_falls_to_next_level_and_star():
    cfg = load_config(
        {
            "merge_method": "linear",
            "models": [
                {"model": "./a", "parameters": {"weight": [{"filter": "mlp", "value": 2.0}]}},
                {"model": "./b", "parameters": {"weight": {"filter": "*", "value": 3.0}}},
            ],
            "parameters": {"weight": 1.0},
        }
    )
    a, b = ModelRef("./a"), ModelRef("./b")
    assert cfg.resolve_param("weight", tensor_name="layers.0.mlp.w", t=0, model=a) == 2.0
    assert cfg.resolve_param("weight", tensor_name="layers.0.attn.w", t=0, model=a) == 1.0
    assert cfg.resolve_param("weight", tensor_name="anything", t=0, model=b) == 3.0


# ---------------------------------------------------------------------------------------- precedence


def test_precedence_models_mode():
    cfg = load_config(
        {
            "merge_method": "task_arithmetic",
            "base_model": "./base",
            "models": [
                {"model": "./a", "parameters": {"weight": 0.2}},
                {"model": "./b"},
            ],
            "parameters": {"weight": 0.9, "density": 0.4},
        }
    )
    a, b = ModelRef("./a"), ModelRef("./b")
    assert cfg.resolve_param("weight", tensor_name="x", t=0, model=a) == 0.2  # model > global
    assert cfg.resolve_param("weight", tensor_name="x", t=0, model=b) == 0.9
    assert cfg.resolve_param("density", tensor_name="x", t=0, model=a) == 0.4
    # slice_index 0 is accepted in models mode (one implicit slice)
    assert cfg.resolve_param("weight", tensor_name="x", t=0, model=a, slice_index=0) == 0.2


def test_precedence_slices_mode_source_over_slice_over_global():
    cfg = load_config(
        {
            "merge_method": "task_arithmetic",
            "base_model": "./base",
            "slices": [
                {
                    "sources": [
                        {"model": "./base", "layer_range": [0, 4]},
                        {"model": "./a", "layer_range": [0, 4], "parameters": {"weight": 0.1}},
                        {"model": "./b", "layer_range": [4, 8]},
                    ],
                    "parameters": {"weight": 0.2, "lambda": 0.5},
                },
                {
                    "sources": [
                        {"model": "./base", "layer_range": [4, 8]},
                        {"model": "./a", "layer_range": [4, 8]},
                    ],
                },
            ],
            "parameters": {"weight": 0.3, "lambda": 2.0},
        }
    )
    a, b = ModelRef("./a"), ModelRef("./b")
    r = cfg.resolve_param
    assert r("weight", tensor_name="x", t=0, model=a, slice_index=0) == 0.1  # source
    assert r("weight", tensor_name="x", t=0, model=b, slice_index=0) == 0.2  # slice
    assert r("weight", tensor_name="x", t=0, model=a, slice_index=1) == 0.3  # global
    assert r("lambda", tensor_name="x", t=0, slice_index=0) == 0.5
    assert r("lambda", tensor_name="x", t=0, slice_index=-1) == 2.0
    # global-scope lookups skip per-source settings, as mergekit's shared parameters do
    assert r("weight", tensor_name="x", t=0, slice_index=0) == 0.2
    with pytest.raises(ValueError):
        r("weight", tensor_name="x", t=0, model=a)  # slices mode needs slice_index


def test_slice_base_override():
    cfg = load_config(
        {
            "merge_method": "slerp",
            "base_model": "./base",
            "slices": [
                {
                    "sources": [
                        {"model": "./base", "layer_range": [0, 2]},
                        {"model": "./a", "layer_range": [0, 2]},
                    ]
                },
                {
                    "base_model": "./a",
                    "sources": [
                        {"model": "./base", "layer_range": [2, 4]},
                        {"model": "./a", "layer_range": [2, 4]},
                    ],
                    "parameters": {"t": 0.25},
                },
            ],
            "parameters": {"t": 0.5},
        }
    )
    assert cfg.slice_base(0) == ModelRef("./base") and cfg.slice_base(1) == ModelRef("./a")
    assert cfg.resolve_param("t", tensor_name="x", t=0, slice_index=1) == 0.25
    assert cfg.input_models(1) == [ModelRef("./base"), ModelRef("./a")]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "recipe, match",
    [
        (
            ties(models=[{"model": "./zoo/base"}, {"model": "./a", "paramters": {"weight": 1}}]),
            ["models[1].paramters", "unknown key", 'Did you mean "parameters"?'],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"densty": 0.5, "weight": 1}}]),
            [
                "models[0].parameters.densty",
                'unknown parameter for merge method "ties"',
                'Did you mean "density"?',
            ],
        ),
        (ties(merge_method="tyes"), ["merge_method", 'Did you mean "ties"?']),
        (ties(merge_methd="ties"), ["merge_methd", 'Did you mean "merge_method"?']),
        ({**ties(), "merge_method": None}, ["merge_method", "expected a string"]),
        ({k: v for k, v in ties().items() if k != "merge_method"}, ['required key "merge_method"']),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": 1, "density": 1.5}}]),
            ["models[0].parameters.density", "1.5", "out of range", "between 0 and 1"],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": 1, "density": [0.5, -0.1]}}]),
            ["models[0].parameters.density[1]", "-0.1", "out of range"],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": "heavy"}}]),
            ["models[0].parameters.weight", "expected a number", "heavy"],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": None}}]),
            ["models[0].parameters.weight", "None"],
        ),
        (ties(models=[{"model": "./a", "parameters": {"weight": float("nan")}}]), ["finite"]),
        (ties(parameters={"normalize": "maybe"}), ["parameters.normalize", "true or false"]),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": 1, "normalize": True}}]),
            ["models[0].parameters.normalize", "global parameter"],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"density": 0.5}}]),
            ['missing required parameter "weight"', 'model "./a"', "models[0].parameters"],
        ),
        (ties(base_model=None), ["base_model", "needs a base_model"]),
        (ties(slices=[{"sources": [{"model": "./a", "layer_range": [0, 2]}]}]), ["exactly one of", "both"]),
        ({"merge_method": "ties", "base_model": "./b"}, ["neither"]),
        ({"merge_method": "linear", "models": []}, ["neither"]),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": [{"fliter": "mlp", "value": 1}]}}]),
            ["models[0].parameters.weight[0].fliter", 'Did you mean "filter"?'],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": [{"filter": "mlp"}]}}]),
            ["models[0].parameters.weight[0]", '"value"'],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": [{"filter": "mlp", "value": 1}, 0.5]}}]),
            ["models[0].parameters.weight", "mixes"],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": [{"filter": 3, "value": 1}]}}]),
            ["weight[0].filter", "string"],
        ),
        (
            ties(models=[{"model": "./a", "parameters": {"weight": {"value": {"filter": "x", "value": 1}}}}]),
            ["weight.value", "nested"],
        ),
        (
            ties(models=[{"model": "./a+b+c", "parameters": {"weight": 1}}]),
            ["models[0].model", "cannot parse"],
        ),
        (
            ties(models=[{"model": {"model": "./a", "lorra": "./l"}, "parameters": {"weight": 1}}]),
            ["models[0].model", 'Did you mean "lora"?'],
        ),
        (ties(models=[{"parameters": {"weight": 1}}]), ['models[0]: required key "model"']),
        (ties(models=["./a"]), ["models[0]", "expected a mapping"]),
        (ties(models={"model": "./a"}), ["models", "expected a list"]),
        (ties(random_seed="abc"), ["random_seed", "expected an integer"]),
        (ties(random_seed=True), ["random_seed", "expected an integer"]),
        (ties(random_seed=-3), ["random_seed", "non-negative"]),
        (ties(modules={"text": {}}), ["modules", "not supported yet"]),
        (ties(experts=[]), ["experts", "mergekit-moe"]),
        (
            ties(
                models=[
                    {"model": "./zoo/base"},
                    {"model": "./a", "parameters": {"weight": 1}},
                    {"model": "./a", "parameters": {"weight": 1}},
                ]
            ),
            ["models", "listed twice"],
        ),
        (
            {
                "merge_method": "linear",
                "base_model": "./b",
                "models": [{"model": "./a", "parameters": {"weight": 1}}],
            },
            ["base_model", 'missing required parameter "weight"', 'model "./b"', "list it under `models:`"],
        ),
    ],
)
def test_bad_recipes(recipe, match):
    msg = err(recipe, match)
    assert msg.startswith("recipe: ")


@pytest.mark.parametrize(
    "parameters, match",
    [
        ({"mode": "c"}, ["parameters.mode", "Choices: a, b"]),
        ({"k": 1.5}, ["parameters.k", "expected an integer"]),
    ],
)
def test_bad_values_of_odd_parameter_kinds(toy, parameters, match):
    msg = err({"merge_method": "toy", "models": [{"model": "./a"}], "parameters": parameters}, match)
    assert msg.startswith("recipe: ")


@pytest.mark.parametrize(
    "recipe, match",
    [
        (
            {
                "merge_method": "slerp",
                "models": [{"model": "./a"}, {"model": "./b"}],
                "parameters": {"t": 0.5},
            },
            ["base_model", "needs a base_model"],
        ),
        (
            {
                "merge_method": "slerp",
                "base_model": "./a",
                "models": [{"model": "./a"}, {"model": "./b"}, {"model": "./c"}],
                "parameters": {"t": 0.5},
            },
            ["models", "exactly 1 model besides the base model; got 2"],
        ),
        (
            {"merge_method": "slerp", "base_model": "./a", "models": [{"model": "./a"}, {"model": "./b"}]},
            ["parameters", 'missing required parameter "t"'],
        ),
        (
            {
                "merge_method": "slerp",
                "base_model": "./a",
                "models": [{"model": "./a"}, {"model": "./b"}],
                "parameters": {"t": 1.2},
            },
            ["parameters.t", "1.2", "out of range"],
        ),
        (
            {"merge_method": "passthrough", "models": [{"model": "./a"}, {"model": "./b"}]},
            ["models", "exactly 1 model;", "use `slices:`"],
        ),
        (
            {
                "merge_method": "passthrough",
                "slices": [
                    {
                        "sources": [
                            {"model": "./a", "layer_range": [0, 2]},
                            {"model": "./b", "layer_range": [0, 2]},
                        ]
                    }
                ],
            },
            ["slices[0].sources", "exactly 1 model; got 2"],
        ),
        (
            {
                "merge_method": "passthrough",
                "slices": [{"sources": [{"model": "./a", "layer_range": [4, 2]}]}],
            },
            ["slices[0].sources[0].layer_range", "start < end", "[4, 2]"],
        ),
        (
            {
                "merge_method": "passthrough",
                "slices": [{"sources": [{"model": "./a", "layer_range": [0, 2, 4]}]}],
            },
            ["slices[0].sources[0].layer_range", "two numbers"],
        ),
        (
            {"merge_method": "passthrough", "slices": [{"sources": [{"model": "./a"}]}]},
            ['slices[0].sources[0]: required key "layer_range"'],
        ),
        (
            {"merge_method": "passthrough", "slices": [{"sources": []}]},
            ["slices[0].sources", "at least one source"],
        ),
        (
            {"merge_method": "passthrough", "slices": [{"source": []}]},
            ["slices[0].source", 'Did you mean "sources"?'],
        ),
        (
            {
                "merge_method": "linear",
                "slices": [
                    {
                        "sources": [
                            {"model": "./a", "layer_range": [0, 2]},
                            {"model": "./b", "layer_range": [0, 3]},
                        ]
                    }
                ],
                "parameters": {"weight": 1},
            },
            ["slices[0].sources", "same number of layers", "[2, 3]"],
        ),
        (
            {
                "merge_method": "ties",
                "base_model": "./base",
                "slices": [{"sources": [{"model": "./a", "layer_range": [0, 2]}]}],
                "parameters": {"weight": 1},
            },
            ["slices[0].sources", 'base model "./base" must be one of the slice\'s sources'],
        ),
        (
            {
                "merge_method": "ties",
                "base_model": "./base",
                "slices": [
                    {
                        "sources": [
                            {"model": "./base", "layer_range": [0, 2]},
                            {"model": "./a", "layer_range": [0, 2]},
                        ]
                    }
                ],
            },
            ["slices[0].sources[1].parameters", 'missing required parameter "weight"'],
        ),
        (
            {
                "merge_method": "ties",
                "base_model": "./base",
                "slices": [
                    {
                        "sources": [
                            {"model": "./base", "layer_range": [0, 2]},
                            {"model": "./a", "layer_range": [0, 2], "parameters": {"lambda": 1}},
                        ]
                    }
                ],
                "parameters": {"weight": 1},
            },
            ["slices[0].sources[1].parameters.lambda", "global parameter"],
        ),
    ],
)
def test_bad_structure(recipe, match):
    err(recipe, match)


def test_yaml_errors_have_line_numbers(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("merge_method: ties\nmodels:\n  - model: ./a\n   parameters: {weight: 1}\n")
    msg = err(f, [str(f), "YAML syntax error", "line 4"])
    assert msg
    f.write_text("merge_method: ties\nmerge_method: linear\n")
    err(f, ['duplicate key "merge_method"', "line 2"])
    f.write_text("merge_method: linear\n---\nmerge_method: ties\n")
    err(f, ["2 YAML documents"])
    f.write_text("")
    err(f, ["empty"])
    f.write_text("- a\n- b\n")
    err(f, ["must be a mapping"])
    err(tmp_path / "missing.yml", ["not found"])


def test_error_names_file(tmp_path):
    f = tmp_path / "r.yml"
    f.write_text(
        "merge_method: ties\nbase_model: ./b\nmodels:\n  - model: ./a\n    parameters: {densty: 0.5, weight: 1}\n"
    )
    msg = err(f, f"{f}: models[0].parameters.densty")
    assert 'Did you mean "density"?' in msg


def test_get_param_required_unset_by_filters():
    cfg = load_config(
        {
            "merge_method": "linear",
            "models": [{"model": "./a", "parameters": {"weight": [{"filter": "mlp", "value": 1.0}]}}],
        }
    )
    a = ModelRef("./a")
    assert cfg.get_param("weight", tensor_name="layers.0.mlp.w", t=0, model=a) == 1.0
    with pytest.raises(ConfigError, match='"weight".*"./a".*"lm_head.weight"'):
        cfg.get_param("weight", tensor_name="lm_head.weight", t=0, model=a)


def test_harmless_extras_accepted():
    cfg = load_config(
        {
            "name": "doc1",
            "merge_method": "passthrough",
            "slices": [{"sources": [{"model": "./a", "layer_range": [0, 2]}], "residual_weight": 0.5}],
        }
    )
    assert cfg.slices[0].residual_weight == 0.5 and cfg.name == "doc1"
    # passthrough with a single model is fine in models mode, as in mergekit
    load_config({"merge_method": "passthrough", "models": [{"model": "./a", "parameters": {"scale": 2.0}}]})


# ----------------------------------------------------------------------- mergekit's own example recipes

MERGEKIT_RECIPES = {
    # mergekit examples/gradient-slerp.yml
    "gradient-slerp": """
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
# or, the equivalent models: syntax:
# models:
#   - model: psmathur/orca_mini_v3_13b
#   - model: garage-bAInd/Platypus2-13B
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
""",
    # mergekit examples/ties.yml
    "ties": """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
""",
    # mergekit examples/orcamini-platy-44layer.yml
    "passthrough": """
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 24]
  - sources:
      - model: garage-bAInd/Platypus2-13B
        layer_range: [20, 40]
merge_method: passthrough
dtype: float16
""",
    # mergekit examples/linear.yml
    "linear": """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
""",
    # mergekit examples/bio-merge.yml
    "bio-merge": """
models:
  - model: mistralai/Mistral-7B-Instruct-v0.2
    parameters:
      density: 0.5
      weight: 0.5
  - model: BioMistral/BioMistral-7B
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  normalize: false
  int8_mask: true
dtype: float16
""",
}


@pytest.mark.parametrize("name", sorted(MERGEKIT_RECIPES))
def test_mergekit_examples_load_unchanged(name):
    cfg = load_config(MERGEKIT_RECIPES[name])
    assert cfg.dtype == "float16"
    if name == "gradient-slerp":
        n = cfg.slices[0].num_layers
        t = cfg.resolve_param(
            "t", tensor_name="model.layers.10.self_attn.o_proj.weight", t=layer_t(10, n), slice_index=0
        )
        # 40 layers, 5 values: scaled = 10/39*4 = 1.0256 -> 0.5 + 0.0256*(0.3-0.5)
        assert t == pytest.approx(0.5 + (40 / 39 - 1) * -0.2)
    if name == "ties":
        wm = ModelRef("WizardLM/WizardMath-13B-V1.0")
        assert (
            cfg.resolve_param("weight", tensor_name="model.layers.0.mlp.up_proj.weight", t=0.3, model=wm)
            == 0.5
        )
        assert (
            cfg.resolve_param("weight", tensor_name="model.layers.0.self_attn.q_proj.weight", t=0.3, model=wm)
            == 0.0
        )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_repo_examples_load(path):
    cfg = load_config(path)
    assert cfg.referenced_models()
    assert all(not os.path.isabs(r.path) for r in cfg.referenced_models())


# ------------------------------------------------------------- every parameter resolves on the real methods


def _resolve_every_param(cfg) -> int:
    """Resolve each parameter the recipe's real method declares, for every input of every merge group, on a
    layer tensor and a non-layer one; each value must pass the method's own validator. Returns the count."""
    m = cfg.method()
    assert m is _real_methods()[cfg.merge_method]
    count = 0
    for g in range(len(cfg.slices)) if cfg.slices else [None]:
        base = cfg.slice_base(g)
        n = cfg.slices[g].num_layers if cfg.slices else 4
        inputs = [r for r in cfg.input_models(g) if not (m.uses_base and r == base)]
        for tensor, t in (("model.layers.0.mlp.up_proj.weight", layer_t(n - 1, n)), ("model.norm.weight", 0.0)):
            for p in m.params:
                for ref in [None] if p.scope == "global" else inputs:
                    value = cfg.get_param(p.name, tensor_name=tensor, t=t, model=ref, slice_index=g)
                    assert (value is None and not p.required) or p.validate(value) == value, (p.name, value)
                    count += 1
    return count


@pytest.mark.parametrize("name", sorted(MERGEKIT_RECIPES))
def test_mergekit_examples_resolve_every_param(name):
    assert _resolve_every_param(load_config(MERGEKIT_RECIPES[name])) > 0


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_repo_examples_resolve_every_param(path):
    assert _resolve_every_param(load_config(path)) > 0
