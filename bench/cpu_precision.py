"""Which weight formats make generation faster on this CPU: each of the embedded model's linear shapes
(attention, MLP in and out, the vocabulary head) at 1, 16 and 120 rows (a decode step alone, a batched
decode step, a prompt), in fp32, bf16, int8 weight-only (`aten._weight_int8pack_mm`, what torchao's
int8 weight-only uses on CPU) and int8 dynamic (`torch.ao` dynamic quantization, fbgemm: activations
quantized too, per tensor). Then whether a row's output under int8 dynamic depends on the other rows of
its batch: it does when the activation scale is the whole batch's, which a server batching many users'
requests cannot accept (a user's answer would change with who else is asking).

python bench/cpu_precision.py
"""

from __future__ import annotations

import time
import warnings

import torch
from serve_batching import machine

SHAPES = {"attention 576x576": (576, 576), "MLP in 1536x576": (1536, 576), "MLP out 576x1536": (576, 1536)}
SHAPES["vocabulary 49152x576"] = (49152, 576)


def microseconds(function, *args, repeats: int = 20) -> float:
    for _ in range(2):
        function(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        function(*args)
    return (time.perf_counter() - start) / repeats * 1e6


def int8_weight_only(weight: torch.Tensor):
    scales = weight.abs().amax(1) / 127
    quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, quantized, scales)


def int8_dynamic(weight: torch.Tensor):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear})


@torch.no_grad()
def main() -> None:
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'layer':>22} {'rows':>4} {'fp32':>8} {'bf16':>8} {'int8 w':>8} {'int8 dyn':>8}  (microseconds)")
    for name, (n_out, n_in) in SHAPES.items():
        weight = torch.randn(n_out, n_in) / n_in**0.5
        weight_bf16, weight_only, dynamic = (
            weight.to(torch.bfloat16),
            int8_weight_only(weight),
            int8_dynamic(weight),
        )
        for rows in (1, 16, 120):
            x = torch.randn(rows, n_in)
            x_bf16 = x.to(torch.bfloat16)
            times = [
                microseconds(torch.nn.functional.linear, x, weight),
                microseconds(torch.nn.functional.linear, x_bf16, weight_bf16, repeats=5),
                microseconds(weight_only, x, repeats=5),
                microseconds(dynamic, x),
            ]
            print(f"{name:>22} {rows:>4} " + " ".join(f"{t:8.0f}" for t in times))

    weight = torch.randn(576, 576) / 24
    dynamic = int8_dynamic(weight)
    row, louder = torch.randn(1, 576), 10 * torch.randn(1, 576)
    alone, batched = dynamic(row), dynamic(torch.cat([row, louder]))[:1]
    error = (alone - row @ weight.T).abs().max().item()
    shift = (alone - batched).abs().max().item()
    print(
        f"int8 dynamic: a row's quantization error alone {error:.3f}; its output moves by {shift:.3f} when a"
    )
    print("louder row shares its batch (0 would mean per-row scales)")


if __name__ == "__main__":
    main()
