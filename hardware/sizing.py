"""Sizing: how a model fits a GPU under vLLM's memory budget, or the CPU's RAM as a GGUF.

vLLM's budget on each GPU is ``total x gpu_memory_utilization`` minus the weights (by dtype or quantisation, split
by tensor parallelism), minus the activation peak of a profiling run (``max_num_batched_tokens``), minus CUDA
graphs and memory outside PyTorch (NCCL buffers when tensor parallel). What is left holds the KV cache:
``2 x layers x KV heads x head dim x KV dtype bytes`` per token, where sliding-window layers only ever hold
their window. The constants below are estimates of what vLLM's profiler measures; they err on the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.catalog import ModelSpec

GIB = 1024**3

WEIGHT_BYTES = {"bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "awq": 0.5625, "gptq": 0.5625}
KV_BYTES = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0}
ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN = 2 * 16  # 16 live bf16 tensors of hidden size per batched token
CUDA_GRAPH_BYTES = 0.5 * GIB
NON_TORCH_BYTES = 0.5 * GIB
NCCL_BYTES = 0.5 * GIB  # per GPU, with tensor parallelism
DEFAULT_UTILIZATION = 0.90
DEFAULT_BATCHED_TOKENS = 8192
DEFAULT_MAX_SEQS = 256


@dataclass(frozen=True)
class GpuFit:
    model: str
    dtype: str
    kv_dtype: str
    tensor_parallel: int
    memory_per_gpu: int
    weights_per_gpu: float
    overhead_per_gpu: float
    kv_budget_per_gpu: float
    kv_bytes_per_token: float  # full-attention layers, per GPU
    kv_tokens: int  # tokens of KV the budget holds at the typical request length
    max_model_len: int  # the longest single request that fits (capped at the model's context)
    max_concurrency: int  # requests of typical length held at once (capped at max_num_seqs)
    typical_len: int
    fits: bool
    why_not: str = ""


def weight_bytes(model: ModelSpec, dtype: str) -> float:
    if dtype == "mxfp4":
        if not model.weights_gb:
            raise ValueError(f"{model.id} has no MXFP4 checkpoint")
        return model.weights_gb * 1e9
    return model.params_b * 1e9 * WEIGHT_BYTES[dtype]


def _per_seq_bytes(model: ModelSpec, length: int, full_tok: float, sliding_tok: float) -> float:
    return length * full_tok + min(length, model.sliding_window or length) * sliding_tok


def size_for_gpu(
    model: ModelSpec,
    memory_per_gpu: int,
    gpus: int = 1,
    dtype: str = "bfloat16",
    kv_dtype: str = "auto",
    tensor_parallel: int | None = None,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_batched_tokens: int = DEFAULT_BATCHED_TOKENS,
    max_num_seqs: int = DEFAULT_MAX_SEQS,
    typical_len: int = 4096,
    min_context: int = 4096,
    min_concurrency: int = 16,
) -> GpuFit:
    """Fit ``model`` on ``gpus`` GPUs of ``memory_per_gpu`` bytes each.

    Without ``tensor_parallel``: the smallest tensor-parallel size that fits and holds ``min_concurrency`` typical
    requests, else the fitting one that holds the most."""
    if tensor_parallel is None:
        fits: list[GpuFit] = []
        last: GpuFit | None = None
        for tp in (1, 2, 4, 8):
            if tp > gpus:
                break
            last = size_for_gpu(model, memory_per_gpu, gpus, dtype, kv_dtype, tp, gpu_memory_utilization,
                                max_num_batched_tokens, max_num_seqs, typical_len, min_context)
            if last.fits:
                if last.max_concurrency >= min_concurrency:
                    return last
                fits.append(last)
        if fits:
            return max(fits, key=lambda f: f.max_concurrency)
        assert last is not None
        return last
    tp = tensor_parallel
    usable = memory_per_gpu * gpu_memory_utilization
    weights = weight_bytes(model, dtype) / tp
    activation = max_num_batched_tokens * model.hidden * ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN / tp
    overhead = activation + CUDA_GRAPH_BYTES + NON_TORCH_BYTES + (NCCL_BYTES if tp > 1 else 0.0)
    kv_budget = usable - weights - overhead
    kv_heads_per_gpu = max(1.0, model.kv_heads / tp)  # fewer KV heads than GPUs: vLLM replicates them
    per_layer = 2 * kv_heads_per_gpu * model.head_dim * KV_BYTES[kv_dtype]
    full_tok = model.full_layers * per_layer
    sliding_tok = model.sliding_layers * per_layer
    why = ""
    if model.heads % tp:
        why = f"{model.heads} attention heads do not split over {tp} GPUs"
    elif weights >= usable:
        why = f"weights need {weights / GIB:.1f} GiB per GPU, {usable / GIB:.1f} GiB usable"
    elif kv_budget <= 0:
        why = "no memory left for the KV cache"
    if why:
        return GpuFit(model.id, dtype, kv_dtype, tp, memory_per_gpu, weights, overhead, kv_budget, full_tok, 0, 0, 0,
                      typical_len, False, why)
    typical = min(typical_len, model.context)
    per_seq = _per_seq_bytes(model, typical, full_tok, sliding_tok)
    kv_tokens = int(kv_budget / (per_seq / typical))
    # the longest request whose KV fits: solve length x full + min(length, window) x sliding <= budget
    if full_tok:
        fixed = (model.sliding_window or 0) * sliding_tok
        longest = int((kv_budget - fixed) / full_tok) if kv_budget > fixed else int(kv_budget / (full_tok + sliding_tok))
    else:
        longest = model.context
    max_len = min(model.context, longest)
    concurrency = min(max_num_seqs, int(kv_budget / per_seq))
    ok = max_len >= min(min_context, model.context) and concurrency >= 1
    return GpuFit(
        model.id, dtype, kv_dtype, tp, memory_per_gpu, weights, overhead, kv_budget, full_tok, kv_tokens, max_len,
        concurrency, typical, ok, "" if ok else f"only {max_len} tokens of context fit",
    )


@dataclass(frozen=True)
class CpuFit:
    model: str
    quant: str
    gguf_file: str
    weights_bytes: float
    kv_bytes: float
    total_bytes: float
    ram_budget: float
    context: int
    est_tokens_per_s: float
    fits: bool


CPU_RAM_SHARE = 0.75  # of total RAM: the OS, the router and the page cache keep the rest
CPU_OVERHEAD_BYTES = 0.5 * GIB
CPU_BANDWIDTH_EFFICIENCY = 0.6  # decode reads every weight once per token, at this share of peak bandwidth


def size_for_cpu(
    model: ModelSpec, ram_total: int, bandwidth_bytes_per_s: float, quant: str = "Q4_K_M", context: int = 8192
) -> CpuFit:
    weights = model.gguf_bytes(quant)
    ctx = min(context, model.context)
    per_layer = 2 * model.kv_heads * model.head_dim * 2.0  # llama.cpp's f16 KV cache
    kv = _per_seq_bytes(model, ctx, model.full_layers * per_layer, model.sliding_layers * per_layer)
    total = weights + kv + CPU_OVERHEAD_BYTES
    budget = ram_total * CPU_RAM_SHARE
    read_per_token = weights * (model.active_params_b / model.params_b if model.active_params_b else 1.0)
    tps = bandwidth_bytes_per_s * CPU_BANDWIDTH_EFFICIENCY / read_per_token
    return CpuFit(model.id, quant, model.gguf_file(quant), weights, kv, total, budget, ctx, tps, total <= budget)
