"""GPU check: throughput of the paper's AT step in four precisions, batched flatness and AutoAttack.

    python benchmarks/gpu_check.py [--out table.md]      # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --tiny                # CPU, tiny sizes, seconds (automatic without CUDA)

Measures, for ``lit_robust.models.ResNet18`` on 32x32x3 inputs:

1. images/s of PGD-7 adversarial training (``lit_robust.modules.PGDAT.training_step``, epsilon 8/255,
   step 0.007, then the SGD update; Stutz et al. 2021, supplement Sec. F) in fp32, bf16-mixed (autocast), bf16-mixed
   with channels-last weights and activations, and fp32 with the network compiled
   (``PGDAT(compile=True)``, ``torch.compile``; compilation happens in the warm-up steps);
2. the speed-up of the batched (``vmap``) against the sequential evaluation of the weight
   perturbations of average-case flatness in RLoss (``lit_robust.measures.flatness.FlatnessMeasures``,
   ``parallel=samples`` against ``parallel=1``, deterministic starts);
3. images/s of AutoAttack (``lit_robust.attacks.evaluation.autoattack_wrong``, standard version).

Writes a Markdown table to ``--out`` (default: standard output).
"""

import argparse
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lit_robust.attacks.evaluation import autoattack_wrong  # noqa: E402
from lit_robust.measures.flatness import FlatnessMeasures  # noqa: E402
from lit_robust.models import ResNet18  # noqa: E402
from lit_robust.modules import PGDAT  # noqa: E402

SIZES = {  # batch, timed steps, warm-up steps, ResNet width, flatness samples/steps, AutoAttack examples
    "full": dict(batch=256, steps=10, warmup=3, width=64, samples=10, flatness_steps=20, flatness_batch=128,
                 autoattack=256),
    "tiny": dict(batch=4, steps=1, warmup=1, width=4, samples=2, flatness_steps=1, flatness_batch=4, autoattack=4),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, step: Callable[[], None], steps: int, warmup: int) -> float:
    """Seconds per step after ``warmup`` untimed steps."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def at_throughput(device: torch.device, size: Dict, precision: str, channels_last: bool, compile_: bool,
                  backend: str) -> float:
    """Images/s of ``PGDAT.training_step`` + backward + SGD step (PGD-7, epsilon 8/255, step 0.007)."""
    torch.manual_seed(0)
    network = ResNet18(width=size["width"], channels_last=channels_last)
    module = PGDAT(model=network, epsilon=8 / 255, step_size=0.007, train_steps=7, compile=compile_).to(device)
    if compile_ and backend != "inductor":
        network.compile(backend=backend)
    else:
        module.configure_model()
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(size["batch"], 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (size["batch"],), device=device)
    bf16 = precision == "bf16-mixed"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step((x, y), 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return size["batch"] / timed(device, step, size["steps"], size["warmup"])


def flatness_speedup(device: torch.device, size: Dict) -> Tuple[float, float, float]:
    """(sequential s, batched s, speed-up) of average-case flatness in RLoss on one batch."""
    torch.manual_seed(0)
    model = ResNet18(width=size["width"]).to(device).eval()
    batch = [(torch.rand(size["flatness_batch"], 3, 32, 32, device=device),
              torch.randint(0, 10, (size["flatness_batch"],), device=device))]
    seconds = {}
    for parallel in (1, size["samples"]):
        meter = FlatnessMeasures(random_start=False, reference_pgd_steps=1, reference_pgd_restarts=1,
                                 samples=size["samples"], average_pgd_steps=size["flatness_steps"], parallel=parallel)
        seconds[parallel] = timed(device, lambda: meter(model, batch, ("avg_rloss",),
                                                        generator=torch.Generator().manual_seed(0)), 1, 1)
    return seconds[1], seconds[size["samples"]], seconds[1] / seconds[size["samples"]]


def autoattack_throughput(device: torch.device, size: Dict) -> float:
    torch.manual_seed(0)
    model = ResNet18(width=size["width"]).to(device).eval()
    n = size["autoattack"]
    x = torch.rand(n, 3, 32, 32, device=device)
    if device.type == "cpu":  # tiny: labels the network gets wrong, so AutoAttack only checks them (seconds)
        with torch.no_grad():
            y = (model(x).argmax(dim=1) + 1) % 10
    else:
        y = torch.randint(0, 10, (n,), device=device)
    start = time.perf_counter()
    autoattack_wrong(model, x, y, 8 / 255, batch_size=n)
    synchronize(device)
    return n / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="Markdown file for the table (default: standard output)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor on a GPU; aot_eager with --tiny, as "
                             "inductor's C++ code generation takes minutes on a small CPU)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    tiny = args.tiny or not torch.cuda.is_available()
    size = SIZES["tiny" if tiny else "full"]
    device = torch.device("cpu" if tiny else "cuda")
    backend = args.compile_backend or ("aot_eager" if tiny else "inductor")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows: List[Tuple[str, str]] = []
    settings = [("fp32", "fp32", False, False), ("bf16-mixed", "bf16-mixed", False, False),
                ("bf16-mixed + channels_last", "bf16-mixed", True, False)]
    if not args.no_compile:
        settings.append((f"fp32 + torch.compile ({backend})", "fp32", False, True))
    for label, precision, channels_last, compile_ in settings:
        ips = at_throughput(device, size, precision, channels_last, compile_, backend)
        rows.append((f"PGD-7 AT, {label}", f"{ips:.1f} images/s"))
    sequential, batched, speedup = flatness_speedup(device, size)
    rows.append((f"avg. flatness in RLoss, {size['samples']} samples x PGD-{size['flatness_steps']}: "
                 f"sequential / batched", f"{sequential:.2f} s / {batched:.2f} s = x{speedup:.2f}"))
    label = "misclassified, so only checked" if tiny else "random labels"
    rows.append((f"AutoAttack (standard), {size['autoattack']} images ({label})",
                 f"{autoattack_throughput(device, size):.1f} images/s"))
    lines = [f"ResNet-18 (width {size['width']}), 32x32x3, batch {size['batch']}, on {name}, torch {torch.__version__}",
             "", "| measurement | result |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
