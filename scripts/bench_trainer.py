"""Trainer overhead benchmark: a plain hand-written PyTorch loop vs ``cvops.ml.training.train_classifier``.

Same model (fresh, same seed), same data (drawn shapes, ImageFolder), same hyperparameters (AdamW, cosine,
flip + RandomResizedCrop, AMP on cuda), same DataLoader settings, measured in one process with the two
alternating (plain, cvops, cvops, plain, ...) to spread machine noise over both.  The plain loop does what
any script would (train, evaluate each epoch) and nothing else: no checkpoints, no progress, no cancel
polling, no RNG bookkeeping — the cost of those is exactly what the ratio shows.  The cvops run's
checkpoint callback does what the Trainer actor does with each checkpoint: sha256, write, fsync.

    python scripts/bench_trainer.py --arch resnet18 --size 64 --epochs 3 --rounds 2
    python scripts/bench_trainer.py --device cuda --num-workers 8 --n-per-class 400

Prints one table: images/s over the whole call (setup, training, validation, checkpoints), images/s of
the training phase alone, and the time from the call to the first optimiser step; then the ratios
(goal: cvops >= 0.95x plain).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.events.schema import Preprocessing  # noqa: E402
from cvops.ml.datasets import validate_dataset  # noqa: E402
from cvops.ml.synthetic import draw_shapes_dataset  # noqa: E402
from cvops.ml.training import train_classifier, validate_hyperparameters  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def build_model(arch: str, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(num_classes=num_classes)  # type: ignore[no-any-return]


def plain_loop(model: nn.Module, root: Path, hp: Any, size: int, device: str) -> dict[str, float]:
    """What a user would write by hand; returns the same figures as the cvops run."""
    t_call = time.perf_counter()
    dev = torch.device(device)
    amp = dev.type == "cuda"
    torch.manual_seed(hp.seed)
    train_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    val_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    train_ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    val_ds = torchvision.datasets.ImageFolder(str(root / "val"), transform=val_tf)
    kw: dict[str, Any] = {
        "num_workers": hp.num_workers,
        "pin_memory": amp,
        "persistent_workers": hp.num_workers > 0,
    }
    if hp.num_workers > 0:
        kw["prefetch_factor"] = 4
    g = torch.Generator().manual_seed(hp.seed)
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=hp.batch_size, shuffle=True, generator=g, **kw
    )
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=hp.batch_size, **kw)
    if amp:
        torch.backends.cudnn.benchmark = True
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    total = hp.epochs * len(train_dl)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    crit = nn.CrossEntropyLoss()
    first: float | None = None
    train_time = 0.0
    images = 0
    for _epoch in range(hp.epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        for x, y in train_dl:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                loss = crit(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if first is None:
                first = time.perf_counter() - t_call
            loss_sum += loss.detach() * y.shape[0]
            images += int(y.shape[0])
        loss_sum.item()
        train_time += time.perf_counter() - t0
        model.eval()
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        with torch.inference_mode():
            for x, y in val_dl:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                    correct += (model(x).argmax(1) == y).sum()
        correct.item()
    wall = time.perf_counter() - t_call
    return {
        "wall_ips": images / wall,
        "train_ips": images / train_time,
        "first_step_s": first or 0.0,
        "wall_s": wall,
    }


def cvops_loop(
    model: nn.Module, root: Path, info: Any, hp: Any, size: int, device: str, async_checkpoint: bool = True
) -> dict[str, float]:
    t_call = time.perf_counter()
    pp = Preprocessing(image_size=[size, size], mean=MEAN, std=STD)
    ckpt_bytes = 0
    blob_dir = Path(tempfile.mkdtemp(prefix="cvops-bench-blobs-"))

    def on_checkpoint(epoch: int, data: bytes, metrics: dict[str, float]) -> None:
        """What the Trainer actor does: hash, write, fsync into a blob store (then drop the file)."""
        nonlocal ckpt_bytes
        ckpt_bytes += len(data)
        digest = hashlib.sha256(data).hexdigest()
        path = blob_dir / digest
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()

    r = train_classifier(
        model,
        root,
        info,
        hp,
        device=device,
        preprocessing=pp,
        checkpoint=on_checkpoint,
        should_stop=lambda: False,
    )
    wall = time.perf_counter() - t_call
    blob_dir.rmdir()
    images = info.images["train"] * r.epochs_done
    return {
        "wall_ips": images / wall,
        "train_ips": r.images_per_s,
        "first_step_s": r.first_step_s,
        "wall_s": wall,
        "ckpt_mb": ckpt_bytes / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--arch", default="resnet18", help="torchvision architecture (resnet18, mobilenet_v3_small)"
    )
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs; the order alternates each round")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument(
        "--inline-checkpoint", action="store_true", help="serialise checkpoints on the training thread"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="cvops-bench-") as tmp:
        root = draw_shapes_dataset(Path(tmp) / "shapes", n_per_class=args.n_per_class, size=args.size, seed=0)
        info = validate_dataset(root, "classification", "imagefolder")
        hp = validate_hyperparameters(
            {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "num_workers": args.num_workers,
                "augment_flip": True,
                "augment_scale_crop": True,
            }
        )
        # warm-up (imports, cudnn autotune, allocator) outside the measurement
        plain_loop(
            build_model(args.arch, 3, 0),
            root,
            validate_hyperparameters({**hp_dict(hp), "epochs": 1}),
            args.size,
            args.device,
        )
        results: dict[str, list[dict[str, float]]] = {"plain": [], "cvops": []}
        for rnd in range(args.rounds):
            order = ("plain", "cvops") if rnd % 2 == 0 else ("cvops", "plain")
            for name in order:
                model = build_model(args.arch, 3, seed=rnd)
                if name == "plain":
                    results[name].append(plain_loop(model, root, hp, args.size, args.device))
                else:
                    results[name].append(
                        cvops_loop(model, root, info, hp, args.size, args.device, not args.inline_checkpoint)
                    )

    dev_name = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu x{args.threads} thread(s)"
    )
    print(
        f"\nbench_trainer: {args.arch} @ {args.size}px, {info.images['train']} train / {info.images['val']} val images, "
        f"{args.epochs} epochs, batch {args.batch_size}, workers {args.num_workers}, {args.rounds} round(s), {dev_name}, "
        f"checkpoints {'inline' if args.inline_checkpoint else 'async'}"
    )
    print(f"{'loop':<8}{'wall img/s':>12}{'train img/s':>13}{'first step s':>14}{'wall s':>9}")
    med: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        med[name] = {
            k: statistics.median(r[k] for r in runs)
            for k in ("wall_ips", "train_ips", "first_step_s", "wall_s")
        }
        m = med[name]
        print(
            f"{name:<8}{m['wall_ips']:>12.1f}{m['train_ips']:>13.1f}{m['first_step_s']:>14.3f}{m['wall_s']:>9.2f}"
        )
    for name, runs in results.items():
        print(f"  {name} runs (wall img/s): " + ", ".join(f"{r['wall_ips']:.1f}" for r in runs))
    wall_ratio = med["cvops"]["wall_ips"] / med["plain"]["wall_ips"]
    train_ratio = med["cvops"]["train_ips"] / med["plain"]["train_ips"]
    print(f"ratio cvops/plain: wall {wall_ratio:.3f}x, train phase {train_ratio:.3f}x (goal >= 0.95x)")
    print(
        f"checkpoint bytes per run (cvops): {statistics.median(r['ckpt_mb'] for r in results['cvops']):.1f} MB"
    )
    return 0


def hp_dict(hp: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(hp)  # type: ignore[no-any-return]


if __name__ == "__main__":
    raise SystemExit(main())
