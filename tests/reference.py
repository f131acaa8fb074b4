"""A plain-numpy Llama forward, written independently of golden_ptq's network, for cross-checks."""
import numpy as np


def rms_norm(x, w, eps):
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * w).astype(np.float32)


def rope(x, positions, theta):
    # x: [T, H, D]; Hugging Face rotate-half convention
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = positions[:, None] * inv[None]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return (x * cos + np.concatenate([-x2, x1], -1) * sin).astype(np.float32)


def forward(weights, cfg, ids):
    """Logits ``[T, V]`` for one unpadded sequence. ``weights`` use golden_ptq parameter names."""
    w = weights
    T = len(ids)
    H, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["hidden_size"] // cfg["num_heads"]
    x = w["model.tok_embeddings.embedding_weight"][ids]
    pos = np.arange(T, dtype=np.float64)
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "attention_norm.weight"], cfg["eps"])
        q = (h @ w[p + "attention.wq.weight"].T).reshape(T, H, D)
        k = (h @ w[p + "attention.wk.weight"].T).reshape(T, Hkv, D)
        v = (h @ w[p + "attention.wv.weight"].T).reshape(T, Hkv, D)
        q, k = rope(q, pos, cfg["theta"]), rope(k, pos, cfg["theta"])
        rep = H // Hkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, H * D)
        x = x + o @ w[p + "attention.wo.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], cfg["eps"])
        g, u = h @ w[p + "feed_forward.w1.weight"].T, h @ w[p + "feed_forward.w3.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "feed_forward.w2.weight"].T
    x = rms_norm(x, w["model.norm_out.weight"], cfg["eps"])
    head = w.get("lm_head.weight", w["model.tok_embeddings.embedding_weight"])
    return x @ head.T


def network_weights(network):
    return {name: p.asnumpy() for name, p in network.parameters_and_names()}


def cfg_dict(config):
    return dict(num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, hidden_size=config.hidden_size,
                num_layers=config.num_layers, eps=config.rms_norm_eps, theta=config.rope_theta)
