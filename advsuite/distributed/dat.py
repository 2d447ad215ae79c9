"""Distributed adversarial training (DAT; Zhang et al., *Distributed Adversarial Training to Robustify Deep
Neural Networks at Scale*, UAI 2022) on DistributedDataParallel, and the single-process reference it is traced
against.

One step, on every process: each of the process's workers (:mod:`.plan`) takes its shard of the global batch,
makes its own adversarial examples with the model in eval mode (PGD from a random start, or DAT's fast FGSM
variant) from a random stream named by the seed, the step and the worker, and back-propagates
``(CE(adversarial) [+ CE(clean)]) / k``; DDP averages the gradients over the processes (through a
compression hook when ``compression`` is set), so every run computes the mean of the workers' gradients.
BatchNorm statistics: every worker's forward starts from the step's buffers, and the buffers after the step
are the mean over workers of each worker's result (averaged across processes with one all-reduce; CPU has no
SyncBatchNorm, so BN normalises each worker's shard on its own, as DDP without SyncBatchNorm does).

The reference (:func:`reference_steps`) runs the same steps in one process without DDP: all workers one
after another, the same initial weights, shards, random streams and buffer rule. Only round-off separates
it from a correct distributed run. Where our defaults differ from the authors' code: see
:mod:`.recipe`; BN buffers are averaged over workers (their code keeps rank 0's through DDP's broadcast).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from advsuite.adversarial_training import pgd_examples
from advsuite.data.bundle import DataBundle, as_tensors
from advsuite.device import resolve_device
from advsuite.errors import AdvsuiteError
from advsuite.seeding import derive_seed
from advsuite.training import (
    _optimizer,
    augment_batch,
    augmentation_plan,
    evaluate_accuracy,
    lr_factor,
    ramped,
    subset_indices,
)

from . import checkpoint
from .bugs import check_bug

if TYPE_CHECKING:
    from advsuite.models.classifier import Classifier
from .compression import compression_generator, encode, mean_of_decoded
from .context import DistContext, init_context
from .hooks import GATHERING, HookState, make_hook
from .plan import GlobalBatches, workers_per_rank
from .recipe import DatRecipe
from .sharding import full_state, load_full, load_optimizer, set_gradient_sync, shard_model
from .tracer import TraceKey, Tracer, canonical_name

LOSS_SCALE_BUG = 1024.0


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def float_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b for name, b in model.named_buffers() if b.is_floating_point()}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class DatStepper:
    """This process's share of DAT steps: its workers' examples, losses and gradients, the optimizer step and
    the buffer average. ``ctx=None`` makes it the reference: every worker in this process, no DDP."""

    def __init__(
        self,
        model: nn.Module,
        recipe: DatRecipe,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        seed: int,
        ctx: DistContext | None,
        tracer: Tracer | None = None,
        substitutes: dict[str, torch.Tensor] | None = None,
        processes: int = 1,
    ) -> None:
        self.model, self.recipe, self.x, self.y, self.seed, self.ctx = model, recipe, x, y, seed, ctx
        self.tracer = tracer
        #: the reference takes the traced run's adversarial inputs and per-process gradients under these keys,
        #: once compared: both come out of discontinuous steps (a sign, a stochastic rounding) (see checker)
        self.substitutes = substitutes or {}
        #: the reference of a run with a gathering compressor replays each of the run's ``processes``: its workers'
        #: gradient, compressed with that process's draws, then the average of the decoded gradients
        self.replays = ctx is None and recipe.compression in GATHERING
        self.processes = processes if self.replays else 1
        self.plan = GlobalBatches(len(x), recipe.batch_size, recipe.workers, seed)
        world, rank = (ctx.world_size, ctx.rank) if ctx else (1, 0)
        self.world, self.rank = world, rank
        self.k = workers_per_rank(recipe.batch_size, recipe.workers, world)
        self.workers = self.plan.rank_workers(rank, world)
        self.padding, self.flip = augmentation_plan(recipe, tuple(x.shape[1:]))
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.total = recipe.epochs * self.steps_per_epoch
        self.warmup = round(recipe.warmup_epochs * self.steps_per_epoch)
        self.ramp = round(recipe.adv_eps_warmup * self.steps_per_epoch)
        self.net: nn.Module = model
        self.hook_state: HookState | None = None
        self.sharded = ctx is not None and recipe.parallel != "ddp"
        if ctx is not None:
            self.net = self._wrap(model, ctx)
        if self.sharded:  # FSDP trains a sharded copy; full_model_state() hands the weights back
            self.model = model = self.net
        lr_scale = world if recipe.bug == "lr_world_scaling" else 1
        self.optimizer = _optimizer(model, recipe)
        if recipe.bug == "lalr_local_norm":
            self.optimizer.shard_local_norms = True  # type: ignore[attr-defined]
        for group in self.optimizer.param_groups:
            group["lr"] *= lr_scale
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total, self.warmup, recipe.schedule)
        )
        self.autocast = recipe.precision == "bf16"

    # --------------------------------------------------------------------------------------------- set-up

    def _wrap(self, model: nn.Module, ctx: DistContext) -> nn.Module:
        recipe = self.recipe
        check_bug(recipe, ctx.world_size, has_batchnorm(model))
        if ctx.rank != 0:  # another initialisation on every other rank: the initial broadcast must do its job
            gen = _generator(derive_seed(self.seed, "scramble", ctx.rank))
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * 0.05)
        if recipe.parallel != "ddp":
            return shard_model(model, recipe.parallel, recipe.shard_group, ctx.device, recipe.bug)
        if recipe.bug == "unreduced_group":  # the last layer's parameters left out of the all-reduce
            last = [n for n, _ in model.named_parameters()][-2:]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, last)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in last:
                        torch.distributed.broadcast(p, 0)  # same start, so only the reduction is missing
        ddp = DistributedDataParallel(
            model, init_sync=recipe.bug != "no_init_broadcast", forward_sync_buffers=False,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        )  # fmt: skip
        self.hook_state, hook = make_hook(recipe.compression, None, recipe.compression_bits, self.seed, recipe.bug)
        self.hook_state.names = {id(p): canonical_name(n) for n, p in model.named_parameters()}
        self.hook_state.record = lambda name, grad: self._trace().record(f"rank{ctx.rank}/{name}", "local_grad", grad)
        ddp.register_comm_hook(self.hook_state, hook)
        return ddp

    # ------------------------------------------------------------------------------------------------ step

    def shard(self, batch: torch.Tensor, worker: int) -> torch.Tensor:
        size = self.recipe.batch_size // self.recipe.workers
        if self.recipe.bug == "shard_duplicate" and self.ctx is not None:
            worker -= self.rank * self.k  # the local index: every process reads the first shards
        if self.recipe.bug == "shard_overlap":
            start = worker * size // 2
            return batch[start : start + size]
        return self.plan.shard(batch, worker)

    def attack_generator(self, step: int, worker: int) -> torch.Generator:
        bug = self.recipe.bug
        if bug == "attack_same_rng":
            return _generator(derive_seed(self.seed, "attack", step))
        if bug == "attack_rng_mismatch":
            return _generator(int(torch.randint(0, 2**62, (1,))))  # the process's global RNG: not reproducible
        return _generator(derive_seed(self.seed, "attack", step, worker))

    def _trace(self) -> Any:
        return self.tracer if self.tracer is not None else _NullTracer()

    def step(self, step: int, batch: torch.Tensor) -> dict[str, float]:
        """One global step; returns this process's sums (loss, clean/adversarial CE, correct, seen)."""
        recipe, tracer, model = self.recipe, self._trace(), self.model
        device = next(model.parameters()).device
        at_start = {n: b.detach().clone() for n, b in model.named_buffers()}
        after: list[dict[str, torch.Tensor]] = []
        sums = {"loss": 0.0, "clean_ce": 0.0, "adv_ce": 0.0, "correct": 0.0, "seen": 0.0}
        per_process = len(self.workers) // self.processes  # the reference of a compressed run: each process's
        intended = 1.0 / per_process  # this process's share: DDP's average over processes does the rest
        local: list[dict[str, torch.Tensor]] = []
        tracer.grad_scale = intended  # activation gradients are traced as those of each worker's own mean loss
        scale = 1.0 if recipe.bug == "accum_unscaled" else intended
        if recipe.bug == "loss_scale_unscaled":
            scale *= LOSS_SCALE_BUG
        self.optimizer.zero_grad(set_to_none=True)
        attack_recipe = ramped(recipe, step, self.ramp)
        steps = 1 if recipe.adversarial == "fast" else recipe.adv_steps
        for i, worker in enumerate(self.workers):
            idx = self.shard(batch, worker)
            aug = _generator(derive_seed(self.seed, "augment", step, worker))
            xw = augment_batch(self.x[idx].to(device), self.padding, self.flip, aug)
            yw = self.y[idx].to(device)
            with torch.no_grad():  # each worker starts from the step's buffers (its attack reads them in eval mode)
                for name, b in model.named_buffers():
                    b.copy_(at_start[name])
            with tracer.micro(worker):
                tracer.record("data", "input", xw)
                with tracer.paused(), self._autocast(), _eval(model):
                    x_adv = pgd_examples(model, xw, yw, attack_recipe, self.attack_generator(step, worker), steps)
                tracer.record("attack", "adv_input", x_adv)
                x_adv = self.substitutes.get(_key(step, worker, "attack", "adv_input"), x_adv).to(device)
                last = i == len(self.workers) - 1
                with self._no_sync(last), self._autocast():
                    with torch.random.fork_rng(devices=_devices(device)):  # dropout: a stream per worker and step
                        torch.manual_seed(derive_seed(self.seed, "dropout", step, worker))
                        logits = self.net(x_adv)
                        adv_ce = F.cross_entropy(logits.float(), yw)
                        loss = adv_ce
                        if recipe.clean_loss:
                            with tracer.scope("clean"):
                                clean_ce = F.cross_entropy(self.net(xw).float(), yw)
                            loss = loss + clean_ce
                    (loss * scale).backward()
                after.append({n: b.detach().clone() for n, b in model.named_buffers()})
                if self.replays and (i + 1) % per_process == 0:
                    local.append(self._process_gradients(step, worker, i // per_process))
            sums["loss"] += float(loss.detach()) * len(yw)
            sums["adv_ce"] += float(adv_ce.detach()) * len(yw)
            sums["clean_ce"] += float(clean_ce.detach()) * len(yw) if recipe.clean_loss else 0.0
            sums["correct"] += float((logits.detach().argmax(1) == yw).sum())
            sums["seen"] += len(yw)
        if self.replays:
            self._replay_exchange(step, local)
        with tracer.micro(recipe.workers):  # after every worker: the step's gradients, weights, buffers
            self.optimizer.step()
            self.scheduler.step()
            self._average_buffers(after)
            for name, b in float_buffers(model).items():
                tracer.record(name, "buffer", b)
        if self.hook_state is not None:
            self.hook_state.step = step + 1
        return sums

    def _process_gradients(self, step: int, worker: int, rank: int) -> dict[str, torch.Tensor]:
        """The reference: process ``rank``'s gradient (its workers' sum), traced as its hook traces it, then
        cleared for the next process's workers."""
        grads = {}
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            path = f"rank{rank}/{canonical_name(name)}"
            self._trace().record(path, "local_grad", p.grad)
            grads[name] = self.substitutes.get(_key(step, worker, path, "local_grad"), p.grad).detach().clone()
            p.grad = None
        return grads

    def _replay_exchange(self, step: int, local: list[dict[str, torch.Tensor]]) -> None:
        """The reference: what the compression hook computes, from the same gradients and draws."""
        recipe = self.recipe
        for name, p in self.model.named_parameters():
            if name not in local[0]:
                continue
            decoded = []
            for rank, grads in enumerate(local):
                gen = compression_generator(self.seed, rank, step, canonical_name(name), p.device)
                parts, decode, _ = encode(recipe.compression, grads[name], recipe.compression_bits, gen)
                decoded.append(decode(*parts))
            p.grad = mean_of_decoded(decoded, local[0][name])

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint holds after ``step`` steps (random streams are derived from the step: no RNG state),
        in full tensors (every process calls it: gathering FSDP shards is a collective)."""
        return {"step": step, "model": self.full_model_state(), "optimizer": full_state(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict()}  # fmt: skip

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The model's weights and buffers, FSDP shards gathered (every process calls it)."""
        return full_state(self.model.state_dict()) if self.sharded else self.model.state_dict()

    def load_state(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint on this process; the step to continue from."""
        if self.sharded:
            load_full(self.model, state["model"], self.recipe.bug)
            load_optimizer(self.optimizer, state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.hook_state is not None:
            self.hook_state.step = int(state["step"])
        return int(state["step"])

    def _average_buffers(self, after: list[dict[str, torch.Tensor]]) -> None:
        """The mean over this process's workers, then over processes (one all-reduce)."""
        if not after or not after[0]:
            return
        with torch.no_grad():
            for name, b in self.model.named_buffers():
                if not b.is_floating_point():  # counters (num_batches_tracked): every worker counted the same
                    b.copy_(after[-1][name])
                    continue
                local = torch.stack([a[name] for a in after]).sum(0) / len(after)
                if self.ctx is not None and self.world > 1 and self.recipe.bug != "bn_unsynced":
                    torch.distributed.all_reduce(local)
                    local /= self.world
                b.copy_(local)

    def _no_sync(self, last: bool) -> Any:
        set_gradient_sync(self.net, last)  # FSDP; DDP's is a context
        if isinstance(self.net, DistributedDataParallel) and not last:
            return self.net.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> Any:
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def bytes_per_step(self) -> float:
        if self.hook_state is None or not self.hook_state.bytes_sent:
            return 0.0
        return sum(self.hook_state.bytes_sent.values()) / len(self.hook_state.bytes_sent)


class WorkerLostError(AdvsuiteError):
    """Another DAT process stopped (killed, crashed or unreachable) while this one waited for it."""


def _peer_lost(exc: BaseException) -> bool:
    """A collective failed because a peer went away (not an error of this process's own computation)."""
    text = str(exc).lower()
    return isinstance(exc, torch.distributed.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "peer", "socket")
    )


def _lost_message(ctx: DistContext, step: int, folder: Path | None, exc: BaseException) -> str:
    saved = sorted(folder.glob("step-*.json")) if folder is not None and folder.is_dir() else []
    last = f"the last complete checkpoint is {saved[-1].with_suffix('.pt')}" if saved else "no checkpoint was written"
    first_line = (str(exc).splitlines() or [""])[0][:200]
    return (f"another DAT process stopped during step {step}, so rank {ctx.rank} of {ctx.world_size} stops too "
            f"({type(exc).__name__}: {first_line}); torchrun's summary names the rank that failed first. {last}; "
            "run the same command again to resume")  # fmt: skip


def _devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _key(step: int, micro: int, path: str, kind: str) -> str:
    return str(TraceKey(step, micro, path, kind))


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """DAT makes its examples with the model in eval mode (BN statistics untouched by the attack)."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class _NullTracer:
    grad_scale = 1.0

    @contextlib.contextmanager
    def micro(self, *_: Any) -> Iterator[None]:
        yield

    paused = scope = micro

    def record(self, path: str, kind: str, tensor: torch.Tensor) -> None:
        pass


def training_tensors(data: DataBundle, recipe: DatRecipe, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split (or its seeded subset, as the standard recipe takes it) as two CPU tensors."""
    x, y = as_tensors(data.train)
    indices = subset_indices(len(x), recipe.train_subset, seed)
    return (x[indices], y[indices]) if indices is not None else (x, y)


def train_dat(
    model: Classifier,
    data: DataBundle,
    recipe: DatRecipe,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    verbose: bool = True,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with DAT on this process's share (all of it without torchrun); returns what
    :func:`advsuite.training.train_classifier` returns plus ``world_size``, ``workers``, ``bytes_per_step``,
    ``images_per_s`` and ``resumed_from`` (a step, or None). Every process ends with the same weights.

    With ``checkpoint_dir``, rank 0 writes a checkpoint every ``recipe.checkpoint_every`` steps (0: every
    epoch), and a run started again with the same recipe resumes from the newest complete one (the zoo removes
    the folder once the trained model is stored)."""
    device = resolve_device(device)
    ctx = init_context(device)
    try:
        model.to(ctx.device)
        x, y = training_tensors(data, recipe, seed)
        stepper = DatStepper(model, recipe, x, y, seed=seed, ctx=ctx)
        digest = recipe.digest({"seed": seed, "n_train": len(x)})
        saved = checkpoint.latest(checkpoint_dir, digest)
        first = 0
        if saved is not None:
            first = stepper.load_state(saved.state)
            if verbose and ctx.is_writer:
                tqdm.write(f"resuming DAT from step {first} ({saved.path})")
        every = recipe.checkpoint_every or stepper.steps_per_epoch
        show = verbose and ctx.is_writer
        bar = tqdm(total=stepper.total, initial=first, desc=f"train dat {getattr(model, 'name', '')}", unit="step",
                   disable=not show)  # fmt: skip
        start, step, sums = time.perf_counter(), 0, {}
        with torch.random.fork_rng(devices=_devices(ctx.device)):
            torch.manual_seed(derive_seed(seed, "global", ctx.rank))
            stepper.model.train()  # under FSDP the sharded copy is what trains
            for epoch in range(recipe.epochs):
                sums = dict.fromkeys(("loss", "clean_ce", "adv_ce", "correct", "seen"), 0.0)
                for batch in stepper.plan.epoch(epoch):
                    if step < first:  # done before the run was stopped
                        step += 1
                        continue
                    try:
                        for name, value in stepper.step(step, batch).items():
                            sums[name] += value
                    except RuntimeError as exc:  # DistError is one
                        if ctx.world_size == 1 or not _peer_lost(exc):
                            raise
                        raise WorkerLostError(_lost_message(ctx, step, checkpoint_dir, exc)) from exc
                    step += 1
                    bar.update(1)
                    seen = max(1.0, sums["seen"])
                    shown = {k: f"{sums[k] / seen:.3f}" for k in ("adv_ce", "clean_ce")}  # rank 0's workers
                    bar.set_postfix(epoch=epoch + 1, **shown, acc=f"{sums['correct'] / seen:.3f}")
                    if checkpoint_dir is not None and step % every == 0 and step < stepper.total:
                        try:
                            state = stepper.state(step)  # every process: FSDP gathers its shards
                            if ctx.is_writer:
                                checkpoint.save(checkpoint_dir, step, state, digest)
                            torch.distributed.barrier()
                        except RuntimeError as exc:
                            if ctx.world_size == 1 or not _peer_lost(exc):
                                raise
                            raise WorkerLostError(_lost_message(ctx, step, checkpoint_dir, exc)) from exc
        bar.close()
        seconds = time.perf_counter() - start
        if stepper.sharded:  # the caller's plain module takes the trained weights
            model.load_state_dict(stepper.full_model_state())
        model.eval()
        accuracy, n_test = evaluate_accuracy(
            model,
            data.test,
            batch_size=recipe.eval_batch_size,
            limit=recipe.test_subset,
            seed=seed,
        )
        seen = max(1.0, sums.get("seen", 0.0))
        ran = step - first
        return {
            "test_accuracy": accuracy,
            "n_test": n_test,
            "train_accuracy": sums.get("correct", 0.0) / seen,
            "train_loss": sums.get("loss", 0.0) / seen,
            "train_clean_ce": sums.get("clean_ce", 0.0) / seen,
            "train_adv_ce": sums.get("adv_ce", 0.0) / seen,
            "train_seconds": round(seconds, 2),
            "epochs": recipe.epochs,
            "steps": step,
            "n_train": len(x),
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "workers": recipe.workers,
            "bytes_per_step": stepper.bytes_per_step(),
            "images_per_s": ran * recipe.batch_size / max(seconds, 1e-9),
            "resumed_from": first if saved is not None else None,
        }
    finally:
        ctx.close()
