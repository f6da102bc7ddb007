"""Independent PyTorch reference implementation of the DECO model.

Written only from the specification docs/deco-model.md (shared/docs/deco-model.md),
never from the C++ sources, so that it can be used to check them.  It is plain
and close to the spec's equations; gradients come from autograd.  The routed
experts are computed DENSELY (every expert for every token, the inactive ones
multiplied by g_e = 0), which is the formulation the authors' code uses.

Parameter names are exactly those of spec section 6, e.g.
    model.embed_tokens.weight, model.layers.3.mlp.expert_up_proj.weight, lm_head.weight

Usage:
    cfg = load_config("parity.yaml", ["model.expert_act=silu"])
    model = DecoForCausalLM(cfg.model, dtype=torch.float64)
    out = model.loss(tokens)   # tokens: LongTensor [B, S+1]
    out.lm_loss, out.reg_loss, out.activation_ratio, out.activation_ratio_per_layer
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

EXPERT_ACTS = ("norm_silu", "norm_silu_nomean", "norm_silu_norms", "silu")
REG_TYPES = ("entropy", "l1", "none")


# --------------------------------------------------------------------------- config

@dataclass
class ModelConfig:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int
    seq_length: int
    num_query_groups: Optional[int] = None       # default: = num_attention_heads
    norm_epsilon: float = 1e-5
    rotary_base: float = 10000.0
    init_method_std: float = 0.01
    num_experts: int = 0                          # 0: every layer is dense
    moe_ffn_hidden_size: int = 64                 # D
    moe_shared_expert_intermediate_size: int = 0  # S (0: no shared expert)
    dense_layers: object = 1                      # int k (first k layers dense) or list of indices
    expert_act: str = "norm_silu"
    expert_gated: bool = False
    router_scale_init: float = 0.1
    expert_compute: str = "sparse"                # C++ code path only; irrelevant here

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                     "vocab_size", "seq_length", "num_experts", "moe_ffn_hidden_size",
                     "moe_shared_expert_intermediate_size"):
            setattr(self, name, int(getattr(self, name)))
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        self.num_query_groups = int(self.num_query_groups)
        # PyYAML (YAML 1.1) reads "1e-5" as a string: coerce explicitly.
        for name in ("norm_epsilon", "rotary_base", "init_method_std", "router_scale_init"):
            setattr(self, name, float(getattr(self, name)))
        if isinstance(self.expert_gated, str):
            self.expert_gated = self.expert_gated.strip().lower() in ("true", "1", "yes", "on")
        self.expert_gated = bool(self.expert_gated)
        if self.expert_act not in EXPERT_ACTS:
            raise ValueError(f"model.expert_act must be one of {EXPERT_ACTS}, got {self.expert_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError("num_query_groups must divide num_attention_heads")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_deco_layer(self, i: int) -> bool:
        if self.num_experts <= 0:
            return False
        if isinstance(self.dense_layers, (list, tuple)):
            return i not in [int(j) for j in self.dense_layers]
        return i >= int(self.dense_layers)

    @property
    def deco_layer_indices(self) -> List[int]:
        return [i for i in range(self.num_layers) if self.is_deco_layer(i)]


@dataclass
class TrainConfig:
    micro_batch_size: int
    global_batch_size: int
    train_iters: int
    seed: int = 1234


@dataclass
class OptimizerConfig:
    lr: float
    min_lr: float = 0.0
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, float(getattr(self, f.name)))


@dataclass
class ScheduleConfig:
    lr_decay_style: str = "wsd"
    lr_warmup_iters: int = 0
    lr_decay_iters: Optional[int] = None
    lr_wsd_decay_style: str = "exponential"
    lr_wsd_decay_iters: int = 0


@dataclass
class SparsityConfig:
    target_ratio: float = 0.2
    reg_type: str = "entropy"
    reg_coef_min: float = 1e-8
    reg_coef_init: Optional[float] = None
    reg_coef_multiplier: float = 1.002

    def __post_init__(self):
        self.target_ratio = float(self.target_ratio)
        self.reg_coef_min = float(self.reg_coef_min)
        self.reg_coef_multiplier = float(self.reg_coef_multiplier)
        self.reg_coef_init = self.reg_coef_min if self.reg_coef_init is None else float(self.reg_coef_init)
        if self.reg_type not in REG_TYPES:
            raise ValueError(f"sparsity.reg_type must be one of {REG_TYPES}, got {self.reg_type!r}")


@dataclass
class Config:
    model: ModelConfig
    training: TrainConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    raw: Dict = field(default_factory=dict)


def _parse_scalar(text: str):
    import yaml
    return yaml.safe_load(text)


def apply_overrides(raw: Dict, overrides: Sequence[str]) -> Dict:
    """Apply `section.key=value` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} is not section.key=value")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = _parse_scalar(value)
    return raw


def _build(cls, section: Dict, name: str):
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in (section or {}).items() if k in known}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"config section '{name}': {e}") from None


def config_from_dict(raw: Dict) -> Config:
    return Config(
        model=_build(ModelConfig, raw.get("model"), "model"),
        training=_build(TrainConfig, raw.get("training"), "training"),
        optimizer=_build(OptimizerConfig, raw.get("optimizer"), "optimizer"),
        schedule=_build(ScheduleConfig, raw.get("schedule"), "schedule"),
        sparsity=_build(SparsityConfig, raw.get("sparsity"), "sparsity"),
        raw=raw,
    )


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    import yaml
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return config_from_dict(apply_overrides(raw, overrides))


# --------------------------------------------------------------------------- building blocks

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w."""

    def __init__(self, dim: int, eps: float, dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _linear(n_in: int, n_out: int, dtype) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False, dtype=dtype)


def rotary_cos_sin(seq_len: int, head_dim: int, base: float, dtype, device=None):
    """cos/sin tables [S, head_dim]: theta_i = base^(-2i/hd), i < hd/2, repeated over both halves."""
    half = head_dim // 2
    i = torch.arange(half, dtype=torch.float64, device=device)
    theta = base ** (-2.0 * i / head_dim)
    p = torch.arange(seq_len, dtype=torch.float64, device=device)
    ang = p[:, None] * theta[None, :]                    # [S, hd/2]
    ang = torch.cat([ang, ang], dim=-1)                  # [S, hd]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x, cos, sin):
    """x: [B, n, S, hd]; cos/sin: [S, hd]."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    # The benchmark peer (bench_reference.py --sdpa) switches to PyTorch's fused
    # scaled_dot_product_attention; the parity tests keep the explicit softmax below.
    use_sdpa = False

    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        self.cfg = cfg
        H, nh, ng, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
        self.q_proj = _linear(H, nh * hd, dtype)
        self.k_proj = _linear(H, ng * hd, dtype)
        self.v_proj = _linear(H, ng * hd, dtype)
        self.o_proj = _linear(nh * hd, H, dtype)

    def forward(self, x, cos, sin):
        B, S, H = x.shape
        nh, ng, hd = self.cfg.num_attention_heads, self.cfg.num_query_groups, self.cfg.head_dim
        q = self.q_proj(x).view(B, S, nh, hd).transpose(1, 2)     # [B, nh, S, hd]
        k = self.k_proj(x).view(B, S, ng, hd).transpose(1, 2)     # [B, ng, S, hd]
        v = self.v_proj(x).view(B, S, ng, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if ng != nh:
            # head h uses kv group h // (nh / ng)
            k = k.repeat_interleave(nh // ng, dim=1)
            v = v.repeat_interleave(nh // ng, dim=1)
        if Attention.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(out.transpose(1, 2).reshape(B, S, nh * hd))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)   # [B, nh, S, S]
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)                                    # [B, nh, S, hd]
        out = out.transpose(1, 2).reshape(B, S, nh * hd)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    """down( silu(gate(x)) * up(x) )."""

    def __init__(self, hidden: int, width: int, dtype):
        super().__init__()
        self.gate_proj = _linear(hidden, width, dtype)
        self.up_proj = _linear(hidden, width, dtype)
        self.down_proj = _linear(width, hidden, dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Weight(nn.Module):
    """Holder so that the parameter is named `<module>.weight`."""

    def __init__(self, tensor):
        super().__init__()
        self.weight = nn.Parameter(tensor)


class ExpertAct(nn.Module):
    """NormSiLU and its ablation variants, applied to u: [..., E*D]."""

    def __init__(self, kind: str, E: int, D: int, eps: float, dtype):
        super().__init__()
        self.kind, self.E, self.D, self.eps = kind, E, D, eps
        if kind in ("norm_silu", "norm_silu_nomean"):
            self.rms_norm = _Weight(torch.ones(D, dtype=dtype))   # gamma, shared by all experts

    def forward(self, u):
        if self.kind == "silu":
            return F.silu(u)
        c = u
        if self.kind in ("norm_silu", "norm_silu_norms"):
            c = c - c.mean(-1, keepdim=True)                     # mean over ALL E*D entries
        if self.kind in ("norm_silu", "norm_silu_nomean"):
            shape = c.shape
            ce = c.reshape(*shape[:-1], self.E, self.D)          # per expert block
            ce = ce * torch.rsqrt(ce.pow(2).mean(-1, keepdim=True) + self.eps) * self.rms_norm.weight
            c = ce.reshape(shape)
        return F.silu(c)


class DecoMLP(nn.Module):
    """The DECO layer (spec section 2), routed experts computed densely."""

    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        H, E, D, Sh = cfg.hidden_size, cfg.num_experts, cfg.moe_ffn_hidden_size, cfg.moe_shared_expert_intermediate_size
        self.E, self.D = E, D
        self.gated = cfg.expert_gated
        self.moe_router = _linear(H, E, dtype)
        self.router_norm = _Weight(torch.full((E,), cfg.router_scale_init, dtype=dtype))
        self.expert_up_proj = _linear(H, E * D, dtype)
        if self.gated:
            self.expert_gate_proj = _linear(H, E * D, dtype)
        self.expert_down_proj = _linear(E * D, H, dtype)
        self.expert_act = ExpertAct(cfg.expert_act, E, D, cfg.norm_epsilon, dtype)
        self.shared_experts = SwiGLU(H, Sh, dtype) if Sh > 0 else None

    def forward(self, h):
        """h: [..., H]. Returns (y, r, z) with r, z: [..., E]."""
        # z = W_r h, in fp32 even under bf16 autocast (spec section 2); a no-op in fp32.
        with torch.autocast(device_type=h.device.type, enabled=False):
            z = self.moe_router(h.to(self.moe_router.weight.dtype))
        r = F.relu(z)                                # ReLU routing
        g = r * self.router_norm.weight              # expert-wise scaling
        if self.gated:
            a = self.expert_act(self.expert_gate_proj(h)) * self.expert_up_proj(h)
        else:
            a = self.expert_act(self.expert_up_proj(h))
        shape = a.shape
        a = (a.reshape(*shape[:-1], self.E, self.D) * g.unsqueeze(-1)).reshape(shape)
        y = self.expert_down_proj(a)
        if self.shared_experts is not None:
            y = y + self.shared_experts(h)
        return y, r, z


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, dtype):
        super().__init__()
        self.is_deco = cfg.is_deco_layer(index)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_epsilon, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_epsilon, dtype)
        self.self_attn = Attention(cfg, dtype)
        self.mlp = DecoMLP(cfg, dtype) if self.is_deco else SwiGLU(cfg.hidden_size, cfg.ffn_hidden_size, dtype)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.post_attention_layernorm(x)
        if self.is_deco:
            y, r, z = self.mlp(h)
            return x + y, r, z
        return x + self.mlp(h), None, None


class DecoModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_epsilon, dtype)


@dataclass
class LossOutput:
    loss: torch.Tensor                 # lm_loss + reg_loss (what is differentiated)
    lm_loss: torch.Tensor
    reg_loss: torch.Tensor
    activation_ratio: float            # pooled over DECO layers (0.0 when there are none)
    activation_ratio_per_layer: List[float]   # one entry per DECO layer, in layer order
    router_logits: List[torch.Tensor]  # z per DECO layer, [B, S, E] (for diagnostics)


def router_entropy(r, eps: float = 1e-5):
    """H(p) per token, p = r / (sum r + 1e-5), H = -sum p log(p + 1e-5)."""
    p = r / (r.sum(-1, keepdim=True) + eps)
    return -(p * torch.log(p + eps)).sum(-1)


class DecoForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        self.model = DecoModel(cfg, dtype)
        self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, dtype)
        self._rope_cache = {}

    # ---------------------------------------------------------------- weights
    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None):
        """Spec section 4: matrices ~ N(0, std^2); o_proj, dense down_proj and the shared
        expert's down_proj ~ N(0, (std/sqrt(2L))^2); norms 1, expert scales router_scale_init,
        gamma 1."""
        std = self.cfg.init_method_std
        scaled = std / math.sqrt(2.0 * self.cfg.num_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("router_norm.weight"):
                    p.fill_(self.cfg.router_scale_init)
                else:
                    p.fill_(1.0)
                continue
            s = scaled if (name.endswith("self_attn.o_proj.weight")
                           or name.endswith("mlp.down_proj.weight")
                           or name.endswith("shared_experts.down_proj.weight")) else std
            p.normal_(0.0, s, generator=generator)

    @torch.no_grad()
    def load_state(self, tensors: Dict[str, "np.ndarray"], strict: bool = True):
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if strict and (missing or extra):
            raise KeyError(f"weight names differ: missing={missing} extra={extra}")
        for name, p in own.items():
            t = torch.as_tensor(tensors[name])
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(t.shape)} != expected {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))

    # ---------------------------------------------------------------- forward
    def _rope(self, S: int, device):
        key = (S, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rotary_cos_sin(S, self.cfg.head_dim, self.cfg.rotary_base, self.dtype, device)
        return self._rope_cache[key]

    def forward(self, inputs):
        """inputs: [B, S] token ids. Returns logits [B, S, V] and the list of (r, z) per DECO layer."""
        B, S = inputs.shape
        if S > self.cfg.seq_length:
            raise ValueError(f"sequence length {S} > model.seq_length {self.cfg.seq_length}")
        cos, sin = self._rope(S, inputs.device)
        x = self.model.embed_tokens(inputs)
        routing = []
        for layer in self.model.layers:
            x, r, z = layer(x, cos, sin)
            if r is not None:
                routing.append((r, z))
        logits = self.lm_head(self.model.norm(x))
        return logits, routing

    def loss(self, tokens, reg_coef: float = 0.0, reg_type: str = "entropy") -> LossOutput:
        """tokens: [B, S+1]; inputs = first S columns, targets = last S columns."""
        tokens = torch.as_tensor(tokens).long()
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits, routing = self.forward(inputs)
        V = logits.shape[-1]
        lm_loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="mean")

        L = self.cfg.num_layers
        reg_loss = logits.new_zeros(())
        per_layer, active, total = [], 0, 0
        for r, z in routing:
            if reg_type == "entropy":
                reg_loss = reg_loss + reg_coef * router_entropy(r).mean() / L
            elif reg_type == "l1":
                reg_loss = reg_loss + reg_coef * r.sum(-1).mean() / L
            elif reg_type != "none":
                raise ValueError(f"unknown reg_type {reg_type!r}")
            with torch.no_grad():
                n_act = int((z > 0).sum())
            per_layer.append(n_act / z.numel())
            active += n_act
            total += z.numel()
        ratio = active / total if total else 0.0
        return LossOutput(loss=lm_loss + reg_loss, lm_loss=lm_loss, reg_loss=reg_loss,
                          activation_ratio=ratio, activation_ratio_per_layer=per_layer,
                          router_logits=[z for _, z in routing])


def param_groups_for_weight_decay(model: nn.Module, weight_decay: float):
    """Spec section 4: no decay on norm weights, expert scales, gamma or any 1-D tensor."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate at optimizer step `step` (0-based) for the configured schedule."""
    o, s = cfg.optimizer, cfg.schedule
    max_lr, min_lr = o.lr, o.min_lr
    total = int(s.lr_decay_iters or cfg.training.train_iters)
    warm = int(s.lr_warmup_iters)
    if warm > 0 and step < warm:
        return max_lr * (step + 1) / warm
    style = s.lr_decay_style
    if style == "constant":
        return max_lr
    if style == "wsd":
        dec = int(s.lr_wsd_decay_iters)
        start = total - dec
        if dec <= 0 or step < start:
            return max_lr
        q = min(1.0, (step - start) / dec)
        shape = s.lr_wsd_decay_style
        if shape == "exponential":
            f = 2.0 * 0.5 ** q - 1.0
        elif shape == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * q))
        else:  # linear
            f = 1.0 - q
        return min_lr + (max_lr - min_lr) * f
    span = max(1, total - warm)
    q = min(1.0, max(0.0, (step - warm) / span))
    if style == "cosine":
        return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))
    if style == "linear":
        return min_lr + (max_lr - min_lr) * (1.0 - q)
    raise ValueError(f"unknown lr_decay_style {style!r}")
