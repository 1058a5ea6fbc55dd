"""A torch ViT with timm's exact module names (timm does not import here), and its weights in
google-research/vision_transformer's ``.npz`` layout.

Module names as timm's ``VisionTransformer`` (class-token pooling, no ``fc_norm``): ``patch_embed.proj``
(Conv2d, kernel = stride = patch), ``cls_token [1, 1, D]``, ``pos_embed [1, T, D]``, ``blocks.N``
with ``norm1``, ``attn.qkv`` (one Linear to ``3D``, output features ordered query/key/value, then
head, then head dim), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; ``norm``; ``head``. LayerNorm
epsilon 1e-6 (timm's ViT). GELU exact (torch's default) or its tanh approximation (the original
flax ViT's ``nn.gelu``).

``google_npz`` writes the same weights under the original checkpoints' keys, written from the
layout's documentation (flax ``MultiHeadDotProductAttention``: ``query``/``key``/``value`` kernels
``[D, heads, head_dim]``, biases ``[heads, head_dim]``, ``out`` kernel ``[heads, head_dim, D]``;
``Dense`` kernels ``[in, out]``; conv kernels ``[kh, kw, in, out]``; pre-Linen module numbering
``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``), not from the
loader under test.
"""

import numpy as np
import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, g, g] -> [B, g*g, D], row-major patches


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.probs = None  # the last forward's attention probabilities [B, heads, T, T]

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        self.probs = attn
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, approximate: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int, approximate: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp, approximate)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
    def __init__(self, patch=16, depth=12, width=768, heads=12, mlp=3072, classes=1000, image_size=224,
                 approximate="none"):
        super().__init__()
        grid = image_size // patch
        self.patch_embed = PatchEmbed(patch, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, width))
        self.blocks = nn.Sequential(*[Block(width, heads, mlp, approximate) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, classes)
        with torch.no_grad():  # random, every parameter non-trivial: no zero bias, no identity LayerNorm
            for name, p in self.named_parameters():
                if name.endswith("weight") and p.ndim > 1:
                    p.normal_(0, p[0].numel() ** -0.5)  # std 1/sqrt(fan_in): attention far from uniform
                elif name.endswith("weight"):  # LayerNorm scale
                    p.normal_(1, 0.1)
                else:
                    p.normal_(0, 0.1)
        self.tokens = []  # each block's output, recorded by forward

    def set_gelu(self, approximate: str) -> None:
        for blk in self.blocks:
            blk.mlp.act = nn.GELU(approximate=approximate)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        self.tokens = []
        for blk in self.blocks:
            x = blk(x)
            self.tokens.append(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def numpy_state(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def google_npz(sd: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
    """timm-layout weights (numpy) under google-research/vision_transformer's ``.npz`` keys."""
    d = sd["cls_token"].shape[-1]
    hd = d // heads
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(depth):
        t, g = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = g + "MultiHeadDotProductAttention_1/"
        out[g + "LayerNorm_0/scale"], out[g + "LayerNorm_0/bias"] = sd[t + "norm1.weight"], sd[t + "norm1.bias"]
        out[g + "LayerNorm_2/scale"], out[g + "LayerNorm_2/bias"] = sd[t + "norm2.weight"], sd[t + "norm2.bias"]
        w, b = sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"]  # rows: (q|k|v, head, head_dim)
        for j, name in enumerate(("query", "key", "value")):
            out[mha + f"{name}/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, heads, hd)
            out[mha + f"{name}/bias"] = b[j * d:(j + 1) * d].reshape(heads, hd)
        out[mha + "out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(heads, hd, d)
        out[mha + "out/bias"] = sd[t + "attn.proj.bias"]
        for r in range(2):
            out[g + f"MlpBlock_3/Dense_{r}/kernel"] = sd[t + f"mlp.fc{r + 1}.weight"].T
            out[g + f"MlpBlock_3/Dense_{r}/bias"] = sd[t + f"mlp.fc{r + 1}.bias"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
