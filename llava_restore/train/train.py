"""LLaVA-style LoRA fine-tuning with reduced visual tokens (RESTORE or a baseline).

    python -m llava_restore.train.train model_path=... data_path=... image_folder=... output_dir=... \\
        --reduction divprune --n-vis 64 --restore [key=value ...]
    deepspeed llava_restore/train/train.py --deepspeed scripts/zero2.json ...   (or torchrun ...)

The visual tokens are reduced in the forward pass with the same ``ReductionConfig`` as eval,
calibration included.  With ``deepspeed=<json>`` the DeepSpeed engine (ZeRO-2/3) runs the step;
without it plain torch (DDP when launched with several ranks).  See docs/finetune.md.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from llava_restore.constants import IGNORE_INDEX
from llava_restore.model.builder import load_pretrained_model
from llava_restore.reduction.config import ReductionConfig
from llava_restore.train.config import TrainConfig, parse_train_config, to_yaml
from llava_restore.train.data import Collator, SupervisedDataset
from llava_restore.train.lora import apply_lora, load_adapter_into, save_adapter, trainable_state
from llava_restore.train.state import (
    TrainerState, epoch_micro_batches, latest_checkpoint, load_rng, prune_checkpoints, read_state, save_rng,
    steps_per_epoch, write_state,
)

log = logging.getLogger("llava_restore.train")
LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(cfg: TrainConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device is not None:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    elif world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def lr_lambda(total: int, warmup: int, kind: str):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return f


def reduction_for(cfg: TrainConfig) -> ReductionConfig | None:
    r = cfg.reduction
    if r.method == "none" and not r.restore and r.n_vis is None:
        return None
    return r.resolve()


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.d = setup_distributed(cfg)
        self.reduction = reduction_for(cfg)
        torch.manual_seed(cfg.seed)  # same LoRA init on every rank
        dtype = DTYPES[cfg.precision]  # the frozen base; trainables: fp32 (plain) or DeepSpeed's master copies
        tok, model, proc, _ = load_pretrained_model(cfg.model_path, cfg.model_base, device=str(self.d.device),
                                                    torch_dtype=dtype, vision_tower=cfg.vision_tower,
                                                    attn_implementation=cfg.attn_implementation)
        self.tokenizer, self.processor = tok, proc
        model.model.gradient_checkpointing = cfg.gradient_checkpointing
        base_name = cfg.model_path  # recorded in adapter_config.json (a LoRA model_path: merge it first to use the result)
        if os.path.isdir(base_name):
            base_name = os.path.abspath(base_name)
        self.peft = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, list(cfg.lora_target_modules),
                               cfg.tune_mm_projector, base_name)
        if not cfg.deepspeed:  # trainables in fp32 (autocast does the low-precision maths)
            for p in self.peft.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        self.peft.train()
        torch.manual_seed(cfg.seed + self.d.rank)  # per-rank stream (LoRA dropout)

        aspect = cfg.image_aspect_ratio or model.config.image_aspect_ratio
        self.dataset = SupervisedDataset(cfg.data_path, cfg.image_folder, tok, proc, cfg.conv_mode, cfg.max_length,
                                         image_aspect_ratio=aspect)
        self.collate = Collator(tok.pad_token_id)
        self.steps_per_epoch = steps_per_epoch(len(self.dataset), self.d.world, cfg.micro_batch_size, cfg.grad_accum)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * self.steps_per_epoch)
        self.state = TrainerState(seed=cfg.seed, world_size=self.d.world, micro_batch_size=cfg.micro_batch_size,
                                  grad_accum=cfg.grad_accum, total_steps=self.total_steps)
        self._build_optimizer(model.config.text.hidden_size)

    # ------------------------------------------------------------------ set-up
    def _build_optimizer(self, hidden_size: int) -> None:
        cfg = self.cfg
        lora = [p for n, p in self.peft.named_parameters() if p.requires_grad and "lora_" in n]
        proj = [p for n, p in self.peft.named_parameters() if p.requires_grad and "lora_" not in n]
        groups = [{"params": lora, "lr": cfg.lr}]
        if proj:
            groups.append({"params": proj, "lr": cfg.mm_projector_lr if cfg.mm_projector_lr is not None else cfg.lr})
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                                weight_decay=cfg.weight_decay)
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.total_steps, warmup, cfg.lr_scheduler))
        self.engine = None
        self.scaler = None
        if cfg.deepspeed:
            import deepspeed

            from llava_restore.train.ds_config import load_ds_config

            ds_cfg = load_ds_config(cfg.deepspeed, cfg, self.d.world, hidden_size)
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=self.peft, optimizer=opt, lr_scheduler=sched, config=ds_cfg)
            self.model = self.engine
        else:
            self.optimizer, self.scheduler = opt, sched
            self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=cfg.precision == "fp16")
            if self.d.world > 1:
                ids = [self.d.device.index] if self.d.device.type == "cuda" else None
                self.model = torch.nn.parallel.DistributedDataParallel(self.peft, device_ids=ids)
            else:
                self.model = self.peft
        self.trainable = [p for p in self.peft.parameters() if p.requires_grad]

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: str) -> None:
        """Collective: every rank calls it."""
        os.makedirs(folder, exist_ok=True)
        state = trainable_state(self.peft)
        if self.d.main:
            save_adapter(self.peft, folder, state)
        if self.engine is not None:
            self.engine.save_checkpoint(os.path.join(folder, "deepspeed"), tag="state", exclude_frozen_parameters=True)
        elif self.d.main:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict()}, os.path.join(folder, "optimizer.pt"))
        save_rng(folder, self.d.rank)
        self.d.barrier()
        if self.d.main:
            write_state(folder, self.state)
            prune_checkpoints(self.cfg.output_dir, self.cfg.save_total_limit)
        self.d.barrier()

    def resume_from(self, folder: str) -> None:
        saved = read_state(folder)
        saved.check_compatible(self.state, folder)
        if self.engine is not None:  # the engine restores the trainable weights (fp32 master copies) itself
            path, _ = self.engine.load_checkpoint(os.path.join(folder, "deepspeed"), tag="state",
                                                  load_module_strict=False, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"{folder}/deepspeed holds no DeepSpeed state")
        else:
            load_adapter_into(self.peft, folder)
            opt_state = torch.load(os.path.join(folder, "optimizer.pt"), map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(opt_state["optimizer"])
            self.scheduler.load_state_dict(opt_state["scheduler"])
            self.scaler.load_state_dict(opt_state["scaler"])
        load_rng(folder, self.d.rank)
        self.state = saved
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", folder, saved.global_step, saved.epoch,
                 saved.micro_in_epoch)

    # --------------------------------------------------------------- one step
    def _forward(self, batch: dict) -> tuple[torch.Tensor, int]:
        dev = self.d.device
        images = batch["images"].to(dev) if batch["images"] is not None else None
        amp = self.engine is None and self.cfg.precision != "fp32"
        ctx = torch.autocast(dev.type, dtype=DTYPES[self.cfg.precision]) if amp else contextlib.nullcontext()
        with ctx:
            out = self.model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev), images,
                             labels=batch["labels"].to(dev), reduction=self.reduction)
            loss = out.loss
            if not bool((out.prepared.labels[:, 1:] != IGNORE_INDEX).any()):  # all answers truncated away
                loss = out.logits.sum() * 0.0  # a zero step instead of NaN
            if images is None and self.cfg.tune_mm_projector:
                loss = loss + 0.0 * self._projector_touch()  # keep the projector in the graph (DDP/ZeRO)
        return loss, int(out.prepared.valid.sum())

    def _projector_touch(self) -> torch.Tensor:
        proj = self.peft.get_base_model().model.mm_projector
        width = self.peft.get_base_model().config.mm_hidden_size
        dtype = next(proj.parameters()).dtype
        return proj(torch.zeros(1, width, device=self.d.device, dtype=dtype)).sum()

    def train_step(self, micro_batches: list[dict]) -> tuple[float, int, int]:
        """One optimizer step over ``grad_accum`` micro-batches -> (mean loss, tokens, truncated) on this rank."""
        losses, tokens, truncated = [], 0, 0
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1
            if self.engine is not None:
                loss, ntok = self._forward(batch)
                self.engine.backward(loss)
                self.engine.step()
            else:
                no_sync = self.model.no_sync if (not sync and self.d.world > 1) else contextlib.nullcontext
                with no_sync():
                    loss, ntok = self._forward(batch)
                    self.scaler.scale(loss / n).backward()
            losses.append(float(loss.detach()))
            tokens += ntok
            truncated += int(batch["n_truncated"])
        if self.engine is None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) / n, tokens, truncated

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------- loop
    def run(self) -> dict:
        cfg, d = self.cfg, self.d
        os.makedirs(cfg.output_dir, exist_ok=True)
        if cfg.resume:
            ckpt = latest_checkpoint(cfg.output_dir)
            if ckpt is None and d.main:
                log.warning("--resume: no complete checkpoint in %s; starting from scratch", cfg.output_dir)
            elif ckpt is not None:
                self.resume_from(ckpt)
        st = self.state
        log_path = os.path.join(cfg.output_dir, LOG_FILE)
        writer = None
        if d.main:
            with open(os.path.join(cfg.output_dir, CONFIG_FILE), "w") as f:
                f.write(to_yaml(cfg, self.reduction))
            _truncate_log(log_path, st.global_step)
            if cfg.report_to == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(cfg.tensorboard_dir or os.path.join(cfg.output_dir, "runs"),
                                       purge_step=st.global_step + 1 if st.global_step else None)
        bar = tqdm(total=self.total_steps, initial=st.global_step, disable=not d.main, desc="finetune", dynamic_ncols=True)
        history, stopped = [], False
        ga = cfg.grad_accum
        while st.global_step < self.total_steps and not stopped:
            batches = epoch_micro_batches(len(self.dataset), cfg.seed, st.epoch, d.world, d.rank, cfg.micro_batch_size)
            batches = batches[: self.steps_per_epoch * ga][st.micro_in_epoch:]
            # own generator: creating the iterator must not draw from the global RNG (resume = same stream)
            gen = torch.Generator().manual_seed(cfg.seed + st.epoch)
            loader = iter(DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate,
                                     num_workers=cfg.num_workers, generator=gen))
            for _ in range(len(batches) // ga):
                t0 = time.perf_counter()
                loss, tokens, truncated = self.train_step([next(loader) for _ in range(ga)])
                loss_sum, tokens, truncated = d.sum([loss, tokens, truncated])
                dt = time.perf_counter() - t0
                st.global_step += 1
                st.micro_in_epoch += ga
                st.tokens_seen += int(tokens)
                st.n_truncated += int(truncated)
                rec = {"step": st.global_step, "epoch": st.epoch, "loss": loss_sum / d.world,
                       "lr": self.current_lr(), "tokens_per_s": tokens / dt, "n_truncated": st.n_truncated}
                history.append(rec)
                if truncated and d.main:
                    log.warning("step %d: %d record(s) truncated to max_length=%d (%d so far)", st.global_step,
                                int(truncated), cfg.max_length, st.n_truncated)
                if d.main:
                    self._log(rec, writer, log_path)
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                stop_now = cfg.stop_after_steps is not None and st.global_step >= cfg.stop_after_steps
                done = st.global_step >= self.total_steps
                if st.global_step % cfg.save_steps == 0 or stop_now or done:  # done: a requeued job has nothing to redo
                    self.save_checkpoint(os.path.join(cfg.output_dir, f"checkpoint-{st.global_step}"))
                if stop_now and not done:
                    stopped = True
                if stopped or done:
                    break
            else:
                st.epoch += 1
                st.micro_in_epoch = 0
        bar.close()
        if not stopped:
            state = trainable_state(self.peft)
            if d.main:
                save_adapter(self.peft, cfg.output_dir, state)
                write_state(cfg.output_dir, st)
        if writer is not None:
            writer.close()
        d.barrier()
        if d.main:
            log.info("%s after step %d; %d record(s) truncated to max_length=%d in total",
                     "stopped" if stopped else "finished", st.global_step, st.n_truncated, cfg.max_length)
        return {"global_step": st.global_step, "stopped": stopped, "history": history, "n_truncated": st.n_truncated}

    def _log(self, rec: dict, writer, log_path: str) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer is not None and rec["step"] % self.cfg.logging_steps == 0:
            writer.add_scalar("train/loss", rec["loss"], rec["step"])
            writer.add_scalar("train/lr", rec["lr"], rec["step"])
            writer.add_scalar("train/tokens_per_s", rec["tokens_per_s"], rec["step"])
            writer.add_scalar("train/n_truncated", rec["n_truncated"], rec["step"])


def _truncate_log(path: str, upto_step: int) -> None:
    """Drop log lines past the step a run (re)starts from (a killed run may have logged beyond it)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= upto_step]
    with open(path, "w") as f:
        f.writelines(keep)


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()


def main(argv: list[str] | None = None) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_train_config(sys.argv[1:] if argv is None else argv)
    return train(cfg)


if __name__ == "__main__":
    main()
