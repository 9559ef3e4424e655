"""Registry of merge methods.

A method is a small pure function on float32 tensors plus a declaration of its parameters, so that the
config layer can validate a recipe before any tensor is read and the executor knows how it may stream.

Calling convention of ``Method.fn``::

    fn(tensors: list[Tensor], *, base: Tensor | None, **params) -> Tensor

* ``tensors``: the non-base inputs for one output tensor, float32, all of the same shape, in recipe order.
  (If the recipe's base model is also listed under ``models`` it is *not* repeated here.)
* ``base``: the base model's tensor (float32) or None when the recipe has no base model.
* parameters declared with ``scope="model"`` arrive as ``list[float]`` aligned with ``tensors``;
  ``scope="global"`` ones as a single scalar.
* random methods also get ``seed: int`` (derived by the executor from ``random_seed`` and the tensor name)
  and must draw all randomness from ``torch.Generator().manual_seed(seed)`` on the CPU, so the output is
  bit-identical whatever the thread count, chunking or device.
* the result is a new float32 tensor (inputs may be modified in place only if ``inplace_ok``).

The planner and ``merge_tensors`` pass every declared parameter (given or default); a method called with
some left out fills them from its declarations with :func:`with_defaults`, so a default is written once,
in its :class:`Param`.

Besides ``fn`` (the reference: whole tensors in memory) a method may declare how the executor may run it
faster: a :class:`Streamer` for tensors that need whole-tensor statistics, computed over row chunks in
several passes (``modelmix.streaming`` has the building blocks), and ``fast_bf16``, a one-pass kernel for
row chunks of bf16 inputs (:data:`FastBf16`). The executor knows no method by name, only these fields.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from modelmix.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import numpy as np

REQUIRED: Any = object()
_SCALAR = (bool, int, float, str)


@dataclass(frozen=True)
class Param:
    name: str
    scope: Literal["global", "model"]
    type: type = float
    default: Any = REQUIRED
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, value: Any) -> Any:
        """The value coerced to this parameter's type, or a ConfigError saying why it is not acceptable.

        The one validator for a parameter value, whether it comes from a recipe (``modelmix.config``) or
        from the Python API (``merge_tensors``): type (YAML's ``1e-3`` string is a number), finiteness,
        ``choices`` and the inclusive ``low``/``high`` bounds declared here, once, on the real registry.
        """
        value = _plain(value)
        if value is None or not isinstance(value, _SCALAR):
            raise ConfigError(f'expected {type_name(self.type)} for "{self.name}", got {short(value)}.')
        from pydantic import ValidationError

        try:
            x = _adapter(self.type).validate_python(value)
        except ValidationError:
            raise ConfigError(f'expected {type_name(self.type)} for "{self.name}", got {short(value)}.') from None
        if isinstance(x, float) and not math.isfinite(x):
            raise ConfigError(f'"{self.name}" must be a finite number, got {short(value)}.')
        if self.choices is not None and x not in self.choices:
            opts = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
            raise ConfigError(
                f'invalid value {short(value)} for "{self.name}".{did_you_mean(str(x), self.choices)} Choices: {opts}.'
            )
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            lo, hi = self.low, self.high
            if (lo is not None and x < lo) or (hi is not None and x > hi):
                if lo is not None and hi is not None:
                    rng = f"between {lo:g} and {hi:g}"
                elif lo is not None:
                    rng = f">= {lo:g}"
                else:
                    rng = f"<= {hi:g}"
                raise ConfigError(f'{x:g} is out of range for "{self.name}" (must be {rng}).')
        return x


def _plain(value: Any) -> Any:
    """numpy scalars, 0-d arrays/tensors and other numbers as plain Python values (weights computed with
    numpy or torch reach ``merge_tensors`` that way)."""
    if isinstance(value, _SCALAR) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar, 0-d array or tensor
        return value.item()
    import numbers

    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


@lru_cache(maxsize=64)
def _adapter(tp: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def type_name(tp: Any) -> str:
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_defaults(params: tuple[Param, ...], given: Mapping[str, Any], n_models: int) -> Mapping[str, Any]:
    """``given`` completed with the declared default of every parameter it lacks (a ``scope="model"`` one as
    a list of ``n_models`` copies); ``given`` itself when nothing is missing, as from the planner and
    ``merge_tensors``, which resolve every parameter. A missing required one is a TypeError, as a missing
    keyword argument is."""
    missing = [p for p in params if p.name not in given]
    if not missing:
        return given
    out = dict(given)
    for p in missing:
        if p.required:
            raise TypeError(f"missing required parameter {p.name!r}")
        out[p.name] = [p.default] * n_models if p.scope == "model" else p.default
    return out


def _always(shape: tuple[int, ...], params: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Streamer:
    """How a method runs as a multi-pass row-chunk streamer (building blocks in ``modelmix.streaming``).

    ``run(src, **params)`` walks ``src`` (a :class:`~modelmix.streaming.ChunkSource`) as many times as it
    needs (statistics passes, then one pass that emits every output chunk) and must equal ``Method.fn`` on
    the whole tensor bit for bit. ``params`` are the resolved parameters, every declared one present (plus
    ``seed`` for a random method). The executor runs every tensor of the method through it, whatever its
    size (a small tensor as one in-memory chunk), unless ``applies(shape, params)`` says no; then the
    reference ``fn`` computes the whole tensor. Empty and 0-d tensors always go to ``fn``.

    ``cache``: the executor may keep a small tensor's float32 inputs (up to ``STREAM_CACHE_BYTES``) in a
    per-thread buffer filled on the first pass, so that later passes neither re-read nor re-convert them.
    That pays when the streamer makes several passes whose arithmetic is cheap next to reading and
    converting the inputs (the task-vector methods' selection, L1 and apply passes), not for two cheap
    passes (SLERP), where writing and re-reading the cache costs what re-reading the inputs saves
    (``benchmarks/bench_merge.py`` measures both).
    """

    run: Callable[..., None]
    applies: Callable[[tuple[int, ...], Mapping[str, Any]], bool] = _always
    cache: bool = False


FastBf16 = Callable[[Any, Mapping[str, Any]], "Callable[[list[np.ndarray], np.ndarray], bool] | None"]
"""``fast_bf16(K, params)`` for a row chunk whose inputs are all bf16: ``K`` is the loaded kernel module
(``modelmix.kernels.backend``), ``params`` the resolved parameters. Returns None when the fast path does not
apply (the kernel it needs is missing, or the parameters are an error the generic path reports), else
``fill(raws, out) -> bool``: the inputs' uint16 bf16 bits in, the output chunk written into ``out`` (uint16
bf16 bits or float32, the output dtype); False when an input is non-finite, and the generic path then
computes the chunk (and reports the NaN/Inf). The result must equal ``fn``'s cast to the output dtype bit
for bit."""


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    needs_base: bool = False  # the recipe must name base_model
    uses_base: bool = True  # base is passed to fn when given (else base is treated as an ordinary model)
    random: bool = False  # fn takes seed=
    elementwise: bool = False  # fn(chunks) == chunks of fn(whole): the executor may stream row chunks
    min_models: int = 1  # number of non-base tensors required
    max_models: int | None = None
    description: str = ""
    reference: str = ""  # paper / mergekit behaviour it follows
    # constraints between parameters, checked per tensor at plan time (so `modelmix check` reports them) and
    # by merge_tensors: check({name: value or per-model list}) raises ConfigError
    check: Callable[[dict[str, Any]], None] | None = None
    streamer: Streamer | None = None  # multi-pass row-chunk execution for whole-tensor statistics
    fast_bf16: FastBf16 | None = None  # one-pass kernel for row chunks of bf16 inputs (element-wise methods)

    def with_defaults(self, given: Mapping[str, Any], n_models: int) -> Mapping[str, Any]:
        """``given`` with this method's defaults filled in (:func:`with_defaults`)."""
        return with_defaults(self.params, given, n_models)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"merge method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f'Unknown merge method "{name}".{did_you_mean(name, _REGISTRY)} '
            f"Available methods: {', '.join(sorted(_REGISTRY))}."
        ) from None


def all_methods() -> dict[str, Method]:
    _load_builtin()
    return dict(_REGISTRY)


def _load_builtin() -> None:
    # Importing the package registers every built-in method exactly once.
    import modelmix.methods  # noqa: F401
