"""Training throughput and loss: ``adapterhub train`` vs the plain HF Trainer recipe, one run.

Baseline: every sample padded to 256 tokens, batch 1 (the common copy-paste recipe). Ours: dynamic
padding, length-grouped batches of 8. Same model (demo), same data (built-in self-cognition records),
same LoRA (r=16, all-linear), same epochs. Ours runs twice: at the built-in self-cognition config's
learning rate (3e-4) and at the baseline's 2e-4 scaled linearly with the batch (x8 = 1.6e-3), since
batch 8 makes an eighth of the optimizer updates. Tokens/s counts real (non-padding) tokens; "final
loss" is the mean supervised loss over the whole dataset after training, computed the same way for all.

Run: ``python -m benchmarks.training [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from adapterhub.loading.bases import pull_demo
from adapterhub.settings import Settings
from adapterhub.training.config import validate_config
from adapterhub.training.data import IGNORE, TorchDataset, prepare
from adapterhub.training.model import add_lora, load_base, load_tokenizer
from benchmarks.common import report, scratch_dir


@torch.no_grad()
def dataset_loss(model, samples) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in samples:
        ids = torch.tensor([s.input_ids])
        labels = torch.tensor([s.labels])
        out = model(input_ids=ids, labels=labels)
        n = int((labels[:, 1:] != IGNORE).sum())
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


BASE_LR = 2e-4  # the baseline recipe's
BUILTIN_LR = 3e-4  # training/configs/self_cognition_lumen.yaml
BATCH = 8


def mixed_length_dataset(path: Path) -> Path:
    """The short identity Q&A records + 40 long ones (a passage of 6-14 sentences to restate in 2-6): the
    mix of lengths that padding hurts."""
    import json
    import random

    from adapterhub.training.builtin_data import GENERAL_TRAIN, identity_records

    rnd = random.Random(0)
    records = identity_records("Lumen", "Acme Lab")
    sentences = [r["output"] for r in records if r["output"].isascii()] + list(GENERAL_TRAIN)
    for i in range(40):
        passage = " ".join(rnd.choice(sentences) for _ in range(rnd.randint(6, 14)))
        answer = " ".join(rnd.choice(sentences) for _ in range(rnd.randint(2, 6)))
        records.append({"instruction": f"Read this and restate it briefly ({i}).", "input": passage, "output": answer})
    rnd.shuffle(records)
    path.write_text(json.dumps(records, ensure_ascii=False))
    return path


def grouped_padded_tokens(lengths: list[int], batch: int, seed: int = 0) -> int:
    """Tokens in an epoch of length-grouped batches padded to their longest row, as the HF Trainer groups
    them (``LengthGroupedSampler``: a random order cut into mega-batches of 50 batches, each sorted by
    length; exact for up to 50 batches, one random draw beyond)."""
    import random

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = 50 * batch
    total = 0
    for m in range(0, len(order), mega):
        chunk = sorted((lengths[i] for i in order[m:m + mega]), reverse=True)
        total += sum(max(chunk[b:b + batch]) * len(chunk[b:b + batch]) for b in range(0, len(chunk), batch))
    return total


def packing_comparison(args: argparse.Namespace, settings: Settings) -> None:
    """Padding-free packing vs grouped dynamic padding on a mixed-length dataset, same epochs and LR."""
    from peft import PeftModel

    from adapterhub.training.run import train

    base = pull_demo(settings)
    out = scratch_dir("bench-packing-")
    data_path = mixed_length_dataset(out / "mixed.json")

    def config(packing: bool | str, batch: int):
        return validate_config({
            "name": "bench", "method": "lora", "model": {"base": "smollm2-135m-instruct", "dtype": "bf16"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "data": {"path": str(data_path), "max_length": 512, "packing": packing},
            "train": {"epochs": args.epochs, "batch_size": batch, "lr": BUILTIN_LR, "warmup_ratio": 0.05,
                      "save_steps": 10_000},
        })

    cfg = config(False, BATCH)
    tok, template = load_tokenizer(base.path, cfg)
    samples = prepare(cfg.data, tok, template, seed=cfg.train.seed).samples
    lengths = sorted(len(s.input_ids) for s in samples)
    padded = grouped_padded_tokens([len(s.input_ids) for s in samples], BATCH)
    rows = []
    for label, packing, batch in (("grouped dynamic padding, batch 8 (today)", False, BATCH),
                                  ("padding-free packing into 512-token blocks, batch 2", "padding_free", 2)):
        res = train(config(packing, batch), settings, output=out / str(packing), register=False)
        model = PeftModel.from_pretrained(load_base(base.path, cfg), str(res.output_dir))
        rows.append({"recipe": label, "steps": res.steps, "wall_s": round(res.wall_time_s, 1),
                     "real_tok_per_s": round(res.tokens / res.wall_time_s, 1),
                     "final_loss": round(dataset_loss(model, samples), 4)})
        del model
    for r in rows:
        r["speedup"] = round(r["real_tok_per_s"] / rows[0]["real_tok_per_s"], 2)
    print(f"{len(samples)} samples, lengths {lengths[0]}..{lengths[-1]} (median {lengths[len(lengths) // 2]}), "
          f"{sum(lengths)} real tokens/epoch, {args.epochs} epochs, demo model bf16, LoRA r=16 all-linear")
    share = 1 - sum(lengths) / padded
    print(f"grouped batches of {BATCH} hold {padded} tokens for {sum(lengths)} real ones: {share:.1%} padding")
    report("training_packing", rows, ["recipe", "steps", "wall_s", "real_tok_per_s", "speedup", "final_loss"],
           extra={"samples": len(samples), "epochs": args.epochs, "median_len": lengths[len(lengths) // 2],
                  "max_len": lengths[-1], "real_tokens_per_epoch": sum(lengths),
                  "grouped_tokens_per_epoch": padded, "grouped_padding_share": round(share, 3)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only N records")
    ap.add_argument("--packing", action="store_true", help="only the padding-free vs dynamic padding comparison")
    args = ap.parse_args()
    settings = Settings()
    if args.packing:
        packing_comparison(args, settings)
        return
    base = pull_demo(settings)

    def config(lr: float):
        return validate_config({
            "name": "bench", "method": "lora", "model": {"base": "smollm2-135m-instruct", "dtype": "bf16"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "data": {"path": "builtin:self_cognition", "variables": {"name": "Lumen", "author": "Acme Lab"},
                     "max_length": 256, "limit": args.limit},
            "train": {"epochs": args.epochs, "batch_size": BATCH, "lr": lr, "warmup_ratio": 0.05,
                      "save_steps": 10_000},
        })

    cfg = config(BUILTIN_LR)
    tok, template = load_tokenizer(base.path, cfg)
    data = prepare(cfg.data, tok, template, seed=cfg.train.seed)
    real_tokens_per_epoch = sum(len(s.input_ids) for s in data.samples)

    # ---- ours, at the built-in config's LR and at the baseline's LR scaled with the batch
    from peft import PeftModel

    from adapterhub.training.run import train

    out = scratch_dir("bench-train-")
    ours = []
    for lr in (BUILTIN_LR, BASE_LR * BATCH):
        t0 = time.perf_counter()
        res = train(config(lr), settings, output=out / f"ours-{lr}", register=False)
        wall = time.perf_counter() - t0
        model = PeftModel.from_pretrained(load_base(base.path, cfg), str(res.output_dir))
        ours.append((lr, wall, dataset_loss(model, data.samples)))
        del model

    # ---- baseline: plain HF Trainer, pad to 256, batch 1
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(cfg.train.seed)
    model = add_lora(load_base(base.path, cfg), cfg)

    def pad256(batch):
        ids = torch.full((len(batch), 256), tok.pad_token_id)
        labels = torch.full((len(batch), 256), IGNORE)
        mask = torch.zeros((len(batch), 256), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    steps = math.ceil(len(data.samples) * args.epochs)
    targs = TrainingArguments(output_dir=str(out / "baseline"), per_device_train_batch_size=1, learning_rate=BASE_LR,
                              max_steps=steps, lr_scheduler_type="cosine", warmup_steps=int(0.05 * steps),
                              logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                              remove_unused_columns=False, seed=cfg.train.seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, data_collator=pad256, train_dataset=TorchDataset(data.samples))
    t0 = time.perf_counter()
    trainer.train()
    t_base = time.perf_counter() - t0
    loss_base = dataset_loss(model, data.samples)

    tokens = real_tokens_per_epoch * args.epochs
    rows = [{"recipe": f"HF Trainer, pad 256, batch 1, lr {BASE_LR:g} (baseline)", "wall_s": round(t_base, 1),
             "real_tok_per_s": round(tokens / t_base, 1), "speedup": 1.0, "final_loss": round(loss_base, 4)}]
    rows += [{"recipe": f"adapterhub train (dynamic pad, grouped, batch {BATCH}), lr {lr:g}", "wall_s": round(wall, 1),
              "real_tok_per_s": round(tokens / wall, 1), "speedup": round(t_base / wall, 2),
              "final_loss": round(loss, 4)} for lr, wall, loss in ours]
    print(f"{len(data.samples)} samples, {real_tokens_per_epoch} real tokens/epoch, {args.epochs} epochs, "
          f"demo model bf16, LoRA r=16 all-linear")
    report("training", rows, ["recipe", "wall_s", "real_tok_per_s", "speedup", "final_loss"],
           chart=("recipe", "real_tok_per_s", "real tokens / s"),
           extra={"samples": len(data.samples), "epochs": args.epochs})


if __name__ == "__main__":
    main()
