"""Training: one folder of Challenge recordings in, one model folder serving all five lead sets out.

Strategy (TrainConfig.strategy):
- "shared" (default): one 12-input model is trained with each sample's leads randomly reduced to one of the five
  Challenge lead sets (the others zeroed). A model for a lead set is then the same network with its first
  convolution sliced to those input channels, which is exactly the 12-lead model fed zeros for the absent leads;
  `finetune_epochs` > 0 then trains each sliced model a little more on its own leads.
- "separate": five models trained from scratch, one per lead set.
bench/RESULTS.md compares them.

Every phase checkpoints after each epoch (atomically, safetensors + JSON) and resumes from there when the same
command is run again; epochs reseed all randomness from (seed, epoch), so a resumed run ends where an
uninterrupted one would. Under torchrun, each process trains on its shard (DistributedDataParallel).
"""

import csv
import math
import os
import sys
import time
import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ecgmamba import checkpoint
from ecgmamba.cache import build_cache
from ecgmamba.inference import model_file_stem, predict_cached, save_lead_model
from ecgmamba.metrics import compute_auc, compute_challenge_metric
from ecgmamba.model import ECGMamba, PRESET_SAMPLING_RATES, preset_config
from ecgmamba.preprocess import PreprocessConfig
from ecgmamba.records import LEAD_SETS, TWELVE_LEADS, RecordError
from ecgmamba.scoring import load_scoring

ENV_PREFIX = "ECGMAMBA_"


@dataclass
class TrainConfig:
    preset: str = "auto"             # "paper", "small", or "auto": paper on CUDA, small on CPU
    strategy: str = "shared"         # "shared" or "separate" (see module docstring)
    epochs: int = 0                  # 0: the preset's default (paper 60, small 12)
    finetune_epochs: int = 0         # per lead set, after the shared phase
    batch_size: int = 0              # 0: the preset's default (paper 32, small 16)
    lr: float = 0.0                  # 0: the preset's default (paper 1e-3, small 3e-3)
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    patience: int = 10               # epochs without validation improvement before stopping
    val_fraction: float = 0.15
    loss: str = "weighted_bce"       # "weighted_bce" or "asymmetric"
    device: str = "auto"             # "auto", "cpu", "cuda", "cuda:1", ...
    workers: int = -1                # DataLoader workers; -1: 0 on CPU, min(8, cores) on CUDA
    cache_workers: int = 0           # preprocessing processes; 0: all cores
    max_cache_seconds: float = 60.0  # seconds of each record kept in the cache (training crops come from these)
    seed: int = 0
    progress: bool = True
    model: dict = field(default_factory=dict)  # ModelConfig overrides of the preset, e.g. {"depth": 8}
    preprocess: dict = field(default_factory=dict)  # PreprocessConfig overrides, e.g. {"scaling": "lead"}

    def resolved(self):
        """Fill the 'auto' and 0 fields from the machine and the preset."""
        c = TrainConfig(**asdict(self))
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.preset == "auto":
            c.preset = "paper" if c.device.startswith("cuda") else "small"
        defaults = {"paper": (60, 32, 1e-3), "small": (12, 16, 3e-3)}.get(c.preset, (30, 32, 1e-3))
        c.epochs = c.epochs or defaults[0]
        c.batch_size = c.batch_size or defaults[1]
        c.lr = c.lr or defaults[2]
        if c.workers < 0:
            c.workers = min(8, os.cpu_count() or 1) if c.device.startswith("cuda") else 0
        if c.strategy not in ("shared", "separate"):
            raise ValueError(f"strategy must be 'shared' or 'separate', not {c.strategy!r}")
        if c.loss not in ("weighted_bce", "asymmetric"):
            raise ValueError(f"loss must be 'weighted_bce' or 'asymmetric', not {c.loss!r}")
        return c


def load_train_config(model_directory, environ=None):
    """Defaults, then MODEL_DIR/train_config.json if present, then ECGMAMBA_<FIELD> environment variables."""
    environ = os.environ if environ is None else environ
    values = {}
    path = os.path.join(model_directory, "train_config.json")
    if os.path.isfile(path):
        values.update(checkpoint.load_json(path))
    types = {f.name: f.type for f in fields(TrainConfig)}
    unknown = set(values) - set(types)
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(types)}")
    for name, kind in types.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        try:
            if kind in (bool, "bool"):
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif kind in (dict, "dict"):
                values[name] = json.loads(raw)
            else:
                values[name] = type(getattr(TrainConfig, name))(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected a {kind}") from None
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------------------------
# Data


class WindowDataset(Dataset):
    """Fixed-length training windows from the cache: a random crop per epoch and, optionally, a random lead set.

    Randomness comes from (seed, epoch, record), not from a global generator, so any worker layout and any resume
    point give the same batches.
    """

    def __init__(self, cache, indices, window, leads, mask_lead_sets=None, seed=0):
        self.cache, self.indices, self.window = cache, np.asarray(indices), window
        self.lead_rows = [TWELVE_LEADS.index(lead) for lead in leads]
        self.masks = None
        if mask_lead_sets:
            self.masks = np.array([[lead in s for lead in leads] for s in mask_lead_sets], dtype=np.float32)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        record = int(self.indices[i])
        rng = np.random.default_rng((self.seed, self.epoch, record))
        signal = self.cache.signal(record)
        start = int(rng.integers(0, max(1, len(signal) - self.window + 1)))
        x = np.zeros((len(self.lead_rows), self.window), dtype=np.float32)
        crop = signal[start:start + self.window, self.lead_rows]
        x[:, :len(crop)] = crop.T
        if self.masks is not None:
            x *= self.masks[rng.integers(len(self.masks))][:, None]
        return torch.from_numpy(x), torch.from_numpy(self.cache.labels[record].astype(np.float32))


def stratified_split(labels, fraction, seed):
    """Train/validation indices keeping every class's prevalence (iterative stratification)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n = len(labels)
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        raise RecordError("training data", f"need at least 2 usable recordings to split off a validation set, have {n}")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    train, val = next(splitter.split(np.zeros(n), labels.astype(int)))
    return np.sort(train), np.sort(val)


# ---------------------------------------------------------------------------------------------------------------
# Loss, schedule, thresholds


def positive_weights(labels):
    """BCE pos_weight per class: sqrt(negatives/positives), clipped to [1, 30]; rare classes count more."""
    positives = labels.sum(0)
    ratio = (len(labels) - positives) / np.maximum(positives, 1)
    return torch.tensor(np.clip(np.sqrt(ratio), 1.0, 30.0), dtype=torch.float32)


def asymmetric_loss(logits, targets, gamma_neg=4.0, gamma_pos=1.0, clip=0.05):
    """Asymmetric loss (Ridnik et al. 2021): down-weights the many easy negatives of multilabel data."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0)
    loss_pos = targets * (1 - p) ** gamma_pos * F.logsigmoid(logits)
    loss_neg = (1 - targets) * p_neg ** gamma_neg * torch.log((1 - p_neg).clamp(min=1e-8))
    return -(loss_pos + loss_neg).sum(1).mean()


def learning_rate(step, total_steps, base_lr, warmup_fraction):
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def tune_thresholds(labels, probabilities, table, grid=np.linspace(0.05, 0.95, 19), passes=2):
    """Per-class thresholds maximising the Challenge metric, by coordinate ascent from 0.5."""
    thresholds = np.full(labels.shape[1], 0.5)
    best = compute_challenge_metric(table.weights, labels, probabilities >= thresholds, table.sinus_rhythm_index)
    for _ in range(passes):
        for k in range(labels.shape[1]):
            for t in grid:
                trial = thresholds.copy()
                trial[k] = t
                score = compute_challenge_metric(table.weights, labels, probabilities >= trial,
                                                 table.sinus_rhythm_index)
                if score > best + 1e-12:
                    best, thresholds = score, trial
    return thresholds, best


# ---------------------------------------------------------------------------------------------------------------
# Distributed helpers


def distributed_context():
    """(rank, world_size, local_rank); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # before NCCL starts, or every rank's collectives land on cuda:0
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), world, local_rank


def barrier(world):
    if world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# One training phase


def specialise(model, leads):
    """A model for `leads` from a 12-lead one: the first convolution keeps only those input channels."""
    config = type(model.config)(**{**asdict(model.config), "num_leads": len(leads)})
    special = ECGMamba(config)
    state = model.state_dict()
    first = "stem.0.weight"
    state[first] = state[first][:, [TWELVE_LEADS.index(lead) for lead in leads]].clone()
    special.load_state_dict(state)
    return special


def validate(model, cache, val_indices, leads, preprocess, table, device, active_leads=None, max_windows=None):
    """Validation scores of `model` (inputs `leads`, of which only `active_leads` are non-zero) with
    inference-style window averaging (at most max_windows windows per record, if given)."""
    probabilities = predict_cached(model, cache, val_indices, leads, preprocess, device, active_leads,
                                   max_windows=max_windows)
    labels = cache.labels[val_indices]
    macro_auroc, macro_auprc, _, _ = compute_auc(labels, probabilities)
    thresholds, challenge = tune_thresholds(labels, probabilities, table)
    return {"auroc": macro_auroc, "auprc": macro_auprc, "challenge": challenge}, probabilities, thresholds


def train_phase(name, model, leads, mask_lead_sets, val_lead_sets, epochs, cache, train_idx, val_idx, config,
                preprocess, table, model_directory, ctx):
    """Train `model` for up to `epochs`; returns the best model (by validation Challenge metric)."""
    rank, world, local_rank = ctx
    device = torch.device(config.device if not config.device.startswith("cuda") or world == 1
                          else f"cuda:{local_rank}")
    ckpt_path = os.path.join(model_directory, "checkpoints", f"{name}.safetensors")
    meta_path = os.path.join(model_directory, "checkpoints", f"{name}.json")
    log_path = os.path.join(model_directory, "train_log.csv")
    model.to(device)

    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) or "pos_embed" in pname
         or "cls_token" in pname else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    dataset = WindowDataset(cache, train_idx, preprocess.window_samples, leads, mask_lead_sets, config.seed)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=config.seed) if world > 1 else None
    steps_per_epoch = math.ceil(math.ceil(len(dataset) / world) / config.batch_size)
    total_steps = max(1, steps_per_epoch * epochs)
    pos_weight = positive_weights(cache.labels[train_idx]).to(device)

    state = {"epoch": 0, "step": 0, "best": -math.inf, "best_epoch": -1, "stale": 0, "history": []}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        tensors, meta = checkpoint.load_checkpoint(ckpt_path) if os.path.isfile(ckpt_path) else (None, None)
    except checkpoint.ModelFileError as error:  # damaged, or from an older version: this phase starts afresh
        tensors = None
        if rank == 0:
            print(f"[{name}] cannot resume ({error}); training this phase from the start", file=sys.stderr)
    if tensors is not None:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        checkpoint.optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        state = meta["state"]
        if rank == 0:
            print(f"[{name}] resuming after epoch {state['epoch']}", file=sys.stderr)
            checkpoint.save_json(meta_path, meta)  # a kill between the two saves below left it an epoch behind
            write_log(model_directory, log_path)

    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = device.type == "cuda"

    while state["epoch"] < epochs and state["stale"] < config.patience:
        epoch = state["epoch"]
        torch.manual_seed(config.seed * 100003 + epoch)
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                            generator=generator, num_workers=config.workers, pin_memory=device.type == "cuda",
                            persistent_workers=False, drop_last=False)
        train_model.train()
        started, total_loss, steps = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"[{name}] epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not (config.progress and rank == 0), file=sys.stderr)
        for x, y in bar:
            lr = learning_rate(state["step"], total_steps, config.lr, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = train_model(x)
            logits = logits.float()
            if config.loss == "asymmetric":
                loss = asymmetric_loss(logits, y)
            else:
                loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            state["step"] += 1
            steps += 1
            total_loss += loss.item()
            bar.set_postfix(loss=f"{total_loss / steps:.4f}", lr=f"{lr:.2e}")
        bar.close()

        if world > 1:  # every rank validates the same weights and BatchNorm statistics, so all stop together
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        model.eval()
        # Per epoch, one window per record (the first 8 s of most records): a quarter of the cost of full
        # inference on mixed-length data; the final thresholds are tuned with full inference windows.
        scores = [validate(model, cache, val_idx, leads, preprocess, table, device, active, max_windows=1)[0]
                  for active in val_lead_sets]
        score = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
        improved = score["challenge"] > state["best"] + 1e-6
        if improved:
            state.update(best=score["challenge"], best_epoch=epoch, stale=0)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        row = {"phase": name, "epoch": epoch + 1, "steps": steps, "train_loss": total_loss / max(steps, 1),
               "val_auroc": score["auroc"], "val_auprc": score["auprc"], "val_challenge": score["challenge"],
               "lr": lr, "seconds": time.time() - started}
        state["history"].append(row)
        if rank == 0:
            print(f"[{name}] epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}  val AUROC "
                  f"{score['auroc']:.3f}  AUPRC {score['auprc']:.3f}  Challenge {score['challenge']:.3f}  "
                  f"({row['seconds']:.0f} s){'  *' if improved else ''}", file=sys.stderr)
            opt_tensors, opt_meta = checkpoint.optimizer_to_tensors(optimizer)
            tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
                       **{f"best.{k}": v for k, v in best_state.items()}, **opt_tensors}
            checkpoint.save_checkpoint(ckpt_path, tensors, {"state": state, "optimizer": opt_meta})
            checkpoint.save_json(meta_path, {"state": state, "optimizer": opt_meta})  # for write_log and people
            write_log(model_directory, log_path)
        barrier(world)

    model.load_state_dict(best_state)
    model.eval()
    return model


def write_log(model_directory, log_path):
    """Per-epoch CSV of every phase so far, and a PNG learning curve beside it."""
    rows = []
    directory = os.path.join(model_directory, "checkpoints")
    for file in sorted(os.listdir(directory)):
        if file.endswith(".json"):
            rows += checkpoint.load_json(os.path.join(directory, file))["state"]["history"]
    if not rows:
        return
    rows.sort(key=lambda r: (r["phase"] != "shared", r["phase"], r["epoch"]))
    tmp = log_path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, log_path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for phase in dict.fromkeys(r["phase"] for r in rows):
        phase_rows = [r for r in rows if r["phase"] == phase]
        epochs = [r["epoch"] for r in phase_rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in phase_rows], marker="o", label=phase)
        ax_val.plot(epochs, [r["val_challenge"] for r in phase_rows], marker="o", label=f"{phase} Challenge")
        ax_val.plot(epochs, [r["val_auroc"] for r in phase_rows], ls="--", label=f"{phase} AUROC")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_val.set(xlabel="epoch", ylabel="validation score", title="Validation")
    ax_loss.legend(fontsize=7)
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(model_directory, "learning_curve.png"), dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def training_code(data_directory, model_directory, config=None, lead_sets=LEAD_SETS):
    """Train models for every lead set in `lead_sets` from the recordings in `data_directory`."""
    os.makedirs(model_directory, exist_ok=True)
    config = (config or load_train_config(model_directory)).resolved()
    ctx = distributed_context()
    rank, world, _ = ctx
    if config.preset not in PRESET_SAMPLING_RATES:
        raise ValueError(f"unknown preset {config.preset!r}; choose one of {sorted(PRESET_SAMPLING_RATES)}")
    model_config = preset_config(config.preset, **config.model)
    preprocess = PreprocessConfig(**{"target_fs": PRESET_SAMPLING_RATES[config.preset],
                                     "window_samples": model_config.num_samples, **config.preprocess})
    if preprocess.window_samples != model_config.num_samples:
        raise ValueError(f"preprocess window_samples {preprocess.window_samples} must equal the model's "
                         f"num_samples {model_config.num_samples}")
    table = load_scoring("2021")
    model_config.num_classes = table.num_classes
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if rank == 0:
        checkpoint.save_json(os.path.join(model_directory, "train_config.resolved.json"), asdict(config))

    cache_directory = os.path.join(model_directory, "cache")
    if rank == 0:
        cache = build_cache(data_directory, cache_directory, preprocess, table, config.max_cache_seconds,
                            workers=config.cache_workers or None, progress=config.progress)
    barrier(world)
    if rank != 0:
        cache = build_cache(data_directory, cache_directory, preprocess, table, config.max_cache_seconds,
                            progress=False)
    skipped = len(cache.meta["skipped"])
    if len(cache) == 0:
        raise RecordError(data_directory, f"no usable recordings ({skipped} skipped)")
    if not cache.labels.any():
        raise RecordError(data_directory, "no recording carries a scored label; nothing to learn")
    if rank == 0:
        print(f"Training on {len(cache)} recordings ({skipped} skipped) with preset {config.preset!r}, "
              f"strategy {config.strategy!r}, device {config.device}", file=sys.stderr)
    train_idx, val_idx = stratified_split(cache.labels, config.val_fraction, config.seed)
    args = (cache, train_idx, val_idx, config, preprocess, table, model_directory, ctx)

    torch.manual_seed(config.seed)
    if config.strategy == "shared":
        shared = ECGMamba(model_config)
        shared = train_phase("shared", shared, TWELVE_LEADS, lead_sets, lead_sets, config.epochs, *args)
        models = {}
        for leads in lead_sets:
            model = specialise(shared.cpu(), leads)
            if config.finetune_epochs > 0:
                model = train_phase(f"finetune_{len(leads)}", model, leads, None, [leads],
                                    config.finetune_epochs, *args)
            models[leads] = model
    else:
        models = {}
        for leads in lead_sets:
            torch.manual_seed(config.seed)
            model = ECGMamba(type(model_config)(**{**asdict(model_config), "num_leads": len(leads)}))
            models[leads] = train_phase(f"separate_{len(leads)}", model, leads, None, [leads], config.epochs,
                                        *args)

    for leads, model in models.items():
        device = next(model.parameters()).device
        scores, _, thresholds = validate(model, cache, val_idx, leads, preprocess, table, device)
        if rank == 0:
            prior = cache.labels[train_idx].mean(0)
            save_lead_model(model_directory, leads, model.cpu(), table, thresholds, preprocess,
                            {"validation": scores, "train_config": asdict(config),
                             "prior": [float(p) for p in prior]})
            print(f"Saved {model_file_stem(leads)}: validation AUROC {scores['auroc']:.3f}  "
                  f"AUPRC {scores['auprc']:.3f}  Challenge {scores['challenge']:.3f}", file=sys.stderr)
    if rank == 0:  # the count again at the end, where a long run's log is read first
        print(f"Done: {len(models)} lead-set models in {model_directory}, trained on {len(cache)} recordings "
              f"({skipped} skipped)", file=sys.stderr)
    barrier(world)
    if world > 1:
        dist.destroy_process_group()
    return models
