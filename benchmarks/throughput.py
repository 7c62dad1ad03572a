"""Throughput (images/s) of one PGD-7 adversarial-training step of CIFAR-sized ResNet-18.

One step is the paper's (Stutz et al. 2021, supplement Sec. F): PGD-7 with epsilon 8/255 and step 0.007 (7 forward and
7 input-gradient passes in eval mode), then a forward and backward pass on the adversarial batch
and an SGD update. It is timed in fp32 and in bf16 mixed precision with channels-last weights and
activations (the perturbation stays in fp32, as in ``--trainer.precision bf16-mixed``), and the
ratio is printed. Run it on the machine whose figures you want:

    python benchmarks/throughput.py                      # GPU if there is one, else CPU
    python benchmarks/throughput.py --device cpu --batch-size 16 --steps 3
"""

import argparse
import time

import torch
import torch.nn.functional as F

from lit_robust.attacks import PGD
from lit_robust.models import ResNet18


def at_step(model, optimizer, attack, x, y, bf16: bool) -> None:
    """One PGD-AT step: the attack, then the weight update, under bf16 autocast when asked."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        x_adv = attack(model, x, y)
        loss = F.cross_entropy(model(x_adv).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def images_per_second(device: torch.device, batch_size: int, steps: int, warmup: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = ResNet18(channels_last=bf16).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    attack = PGD(8 / 255, 0.007, 7, keep_best=False)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    for _ in range(warmup):
        at_step(model, optimizer, attack, x, y, bf16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        at_step(model, optimizer, attack, x, y, bf16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"PGD-7 AT step, ResNet-18, 32x32, batch {args.batch_size}, {args.steps} timed steps on {name}")
    fp32 = images_per_second(device, args.batch_size, args.steps, args.warmup, bf16=False)
    print(f"  fp32                       {fp32:10.2f} images/s")
    bf16 = images_per_second(device, args.batch_size, args.steps, args.warmup, bf16=True)
    print(f"  bf16-mixed + channels_last {bf16:10.2f} images/s")
    print(f"  ratio bf16 / fp32          {bf16 / fp32:10.2f}")


if __name__ == "__main__":
    main()
