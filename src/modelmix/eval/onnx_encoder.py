"""A BERT-family sentence encoder as one ONNX Runtime graph: tokens in, pooled unit vectors out.

Why: the router classifies every query with a small encoder (all-MiniLM-L6-v2 by default) while the
server's other threads are busy in Python. A torch forward is ~700 small operator calls from Python, and
each call gives Python's GIL back and waits for it again; with one other thread running Python, a MiniLM
forward measured 14.8 ms alone and 577 ms (p50) under that contention on a 2-core AMD EPYC. One
``InferenceSession.run`` releases the GIL once for the whole forward: 6.5 ms alone and 17 ms beside the
same busy thread, equal to the torch forward to ~2e-6 (tests compare them).

The graph is written here from the checkpoint's weights with ``onnx.helper`` (no tracing, no exporter):
word + position + token-type embeddings and LayerNorm; per layer self-attention with an additive padding
mask, the output projection and LayerNorm, the GELU feed-forward and LayerNorm; then the model's pooling
(mean, cls or max over the unpadded tokens) and L2 normalisation, so one ``run`` gives what
:func:`modelmix.eval.metrics.embed` gives. Architectures other than plain BERT (absolute positions, erf
GELU) are refused with the reason, and callers keep the torch forward for them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: the pooling modes the graph implements (EvalModel's POOLINGS)
_POOLINGS = ("mean", "cls", "max")


def unsupported(em: Any) -> str | None:
    """Why ``em``'s encoder cannot run as an ONNX graph here (None: it can)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime/onnx are not installed ({e.name})"
    cfg = getattr(em.model, "config", None)
    if em.kind != "encoder":
        return "not an encoder"
    if cfg is None or getattr(cfg, "model_type", None) != "bert":
        return f"model type {getattr(cfg, 'model_type', None)!r} is not bert"
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return f"position embeddings {cfg.position_embedding_type!r} are not absolute"
    if getattr(cfg, "hidden_act", None) != "gelu":
        return f"activation {cfg.hidden_act!r} is not gelu"
    if em.pooling not in _POOLINGS:
        return f"pooling {em.pooling!r}"
    if em.device.type != "cpu":
        return f"the model is on {em.device}, the ONNX encoder runs on the CPU"
    if next(em.model.parameters()).dtype != torch.float32:
        return f"weights are {next(em.model.parameters()).dtype}, the ONNX encoder is float32"
    return None


def _weights(model: Any) -> dict[str, np.ndarray]:
    sd = model.state_dict()
    prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""
    return {k[len(prefix):]: v.detach().float().cpu().numpy() for k, v in sd.items() if k.startswith(prefix)}


def build_graph(model: Any, pooling: str) -> Any:
    """The ``onnx.ModelProto`` of ``model`` (a transformers BertModel) with ``pooling`` and normalisation.

    Inputs ``input_ids`` and ``attention_mask`` (int64, batch x tokens); output ``embedding`` (float32,
    batch x hidden), L2-normalised."""
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.config
    w = _weights(model)
    d, heads, eps = cfg.hidden_size, cfg.num_attention_heads, float(cfg.layer_norm_eps)
    dh = d // heads
    inits: list[Any] = []
    nodes: list[Any] = []
    counter = [0]

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr if arr.flags.c_contiguous else arr.copy(), name))
        return name

    def op(kind: str, inputs: Sequence[str], **attrs: Any) -> str:
        counter[0] += 1
        out = f"{kind.lower()}_{counter[0]}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def linear(x: str, name: str) -> str:  # x @ W^T + b, W stored transposed once here
        wt = const(f"{name}.weight_t", w[f"{name}.weight"].T)
        return op("Add", [op("MatMul", [x, wt]), const(f"{name}.bias", w[f"{name}.bias"])])

    def layer_norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, const(f"{name}.weight", w[f"{name}.weight"]),
                                         const(f"{name}.bias", w[f"{name}.bias"])], axis=-1, epsilon=eps)

    i64 = lambda name, v: const(name, np.array(v, dtype=np.int64))  # noqa: E731
    f32 = lambda name, v: const(name, np.array(v, dtype=np.float32))  # noqa: E731
    zero, one = i64("i0", [0]), i64("i1", [1])

    # embeddings: word + position (0..s-1) + token type 0, then LayerNorm
    seq = op("Slice", [op("Shape", ["input_ids"]), one, i64("i2", [2])])
    pos = op("Slice", [const("pos_emb", w["embeddings.position_embeddings.weight"]), zero, seq, zero])
    word = op("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"])
    x = op("Add", [op("Add", [word, pos]), f32("type0", w["embeddings.token_type_embeddings.weight"][0])])
    x = layer_norm(x, "embeddings.LayerNorm")

    # additive mask (batch, 1, 1, tokens): 0 where attended, the float minimum where padding (as transformers)
    maskf = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = op("Mul", [op("Sub", [f32("f1", 1.0), maskf]), f32("fmin", np.finfo(np.float32).min)])
    bias = op("Unsqueeze", [bias, i64("axes12", [1, 2])])
    split_heads = i64("split_heads", [0, 0, heads, dh])
    merge_heads = i64("merge_heads", [0, 0, d])
    scale = f32("scale", 1.0 / math.sqrt(dh))
    half, sqrt2, onef = f32("half", 0.5), f32("sqrt2", math.sqrt(2.0)), f32("one", 1.0)
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}"
        q, k, v = (op("Reshape", [linear(x, f"{p}.attention.self.{n}"), split_heads]) for n in ("query", "key", "value"))
        scores = op("MatMul", [op("Transpose", [q], perm=[0, 2, 1, 3]), op("Transpose", [k], perm=[0, 2, 3, 1])])
        probs = op("Softmax", [op("Add", [op("Mul", [scores, scale]), bias])], axis=-1)
        ctx = op("MatMul", [probs, op("Transpose", [v], perm=[0, 2, 1, 3])])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        x = layer_norm(op("Add", [linear(ctx, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        h = op("Mul", [op("Mul", [h, half]), op("Add", [op("Erf", [op("Div", [h, sqrt2])]), onef])])  # exact GELU
        x = layer_norm(op("Add", [linear(h, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")

    # pooling over the unpadded tokens, then x / max(|x|, 1e-12) like torch.nn.functional.normalize
    m = op("Unsqueeze", [maskf, i64("axis2", [2])])
    if pooling == "mean":
        s = op("ReduceSum", [op("Mul", [x, m]), one], keepdims=0)
        n = op("Max", [op("ReduceSum", [m, one], keepdims=0), f32("tiny", 1e-9)])
        v = op("Div", [s, n])
    elif pooling == "cls":
        v = op("Gather", [x, i64("first", 0)], axis=1)
    else:
        live = op("Cast", [m], to=TensorProto.BOOL)
        v = op("ReduceMax", [op("Where", [live, x, f32("ninf", -np.inf)]), one], keepdims=0)
    norm = op("Max", [op("ReduceL2", [v, i64("axis_last", [-1])], keepdims=1), f32("eps12", 1e-12)])
    nodes.append(helper.make_node("Div", [v, norm], ["embedding"]))

    graph = helper.make_graph(
        nodes, "sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", d])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


class OnnxEncoder:
    """``em``'s encoder as an ONNX Runtime session; :meth:`embed` equals ``metrics.embed`` on the torch model.

    ``threads``: ONNX Runtime intra-op threads per call. One by default: a server runs several calls at
    once from its request threads, and on 2 cores under 32 clients one thread per call served 61-68
    answers/s against 48/s with two (alone, one query takes 5.2 ms with one thread, 3.4 ms with two).
    :meth:`embed` may be called from several threads at once (``run`` is thread-safe; tokenising takes a
    lock). The session holds its own copy of the weights."""

    def __init__(self, em: Any, *, threads: int = 1) -> None:
        import onnxruntime as ort

        why = unsupported(em)
        if why:
            raise ValueError(f"{em.name} cannot run as an ONNX encoder: {why}.")
        self.tokenizer = em.tokenizer
        self.max_seq_length = em.max_seq_length
        self.pooling = em.pooling
        self.hidden = int(em.model.config.hidden_size)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # idle intra-op threads sleep instead of spinning: the server's other threads need the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        proto = build_graph(em.model, em.pooling)
        self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self._tok_lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, batch_size: int | None = None) -> torch.Tensor:
        """L2-normalised embeddings (float32, CPU) of ``texts``: batches of similar lengths, one run each."""
        from modelmix.eval.metrics import encoder_batches

        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        # a fast tokenizer mutates its Rust state when settings change: one caller tokenises at a time
        with self._tok_lock:
            batches = list(encoder_batches(self.tokenizer, texts, self.max_seq_length, self.hidden, batch_size))
        for idx, ids, attn in batches:
            out[idx] = self.session.run(None, {"input_ids": ids, "attention_mask": attn})[0]
        return torch.from_numpy(out)
