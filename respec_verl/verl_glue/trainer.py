"""verl's V1 synchronous trainer with respec: one key, `actor_rollout_ref.respec.enable=true`.

`RespecPPOTrainerSync` subclasses verl's `PPOTrainerSync` and, with respec off, is it but for the
replay buffer's poll interval. The plugin installs it as verl's "sync" trainer where the run asks
for respec (`install_switch`: the key on verl's command line, or `RESPEC_VERL_INSTALL=1`), so that
the one key is all a run needs. With respec on it:
- prepares the run before verl builds anything (`prepare_rollout`): the drafter folder vLLM loads
  (a self-draft cut from the actor, or `drafter.path`), the step-cost profile the controller needs
  (vLLM's engine steps measured once on this machine and cached in the run folder, or
  `respec.profile`), and the rollout settings, written to `actor_rollout_ref.rollout.custom.respec`
  where verl hands them to its vLLM servers;
- runs verl's actor worker as `RespecActorRolloutRefWorker` (drafter distillation after the actor
  update, drafter push after the weight sync, drafter checkpoints);
- logs `rollout/spec_accept_length`, `rollout/spec_accept_rate` (verl's own names and formula,
  from per-rollout vLLM stats), the controller's choices as `respec/controller/*`, and the
  learner's `respec/drafter/*` under that name rather than verl's `actor/` prefix;
- saves the controller's state file with verl's checkpoints and restores it on resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import ray
from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from respec_verl.upstream.verl_compat import checkpoint_folder, install_trainer
from respec_verl.verl_glue.config import RespecConfig
from respec_verl.vllm_glue.settings import CUSTOM_KEY, RolloutSettings

logger = logging.getLogger(__name__)

STATE_FILE = "respec_controller_state.json"


def run_dir(config: Any) -> Path:
    """Where respec keeps its run files: `<trainer.default_local_dir>/respec`."""
    return Path(os.path.abspath(str(config.trainer.default_local_dir))) / "respec"


def prepare_rollout(config: Any, respec: RespecConfig) -> RolloutSettings:
    """Drafter folder, profile and rollout settings for a run; writes `rollout.custom.respec` into `config`."""
    folder = run_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = str(config.actor_rollout_ref.model.path)
    history = respec.drafter.method == "history"
    drafter_dir = ""
    if not history:
        drafter_dir = respec.drafter.path or str(cut_self_draft(model_path, folder / "self_draft", respec.drafter))
    controller = respec.controller
    controller_settings = respec.to_dict()["controller"]
    if history and controller.policy == "adaptive":  # vLLM's custom proposer hook drafts max_k whatever k is picked
        logger.warning("respec: drafter.method=history drafts controller.max_k=%d tokens at every step (vLLM's "
                       "custom proposer hook is not told a per-step k): controller.policy adaptive runs as fixed",
                       controller.max_k)
        controller_settings["policy"] = "fixed"
    max_num_seqs = int(config.actor_rollout_ref.rollout.max_num_seqs)
    speculative = controller.policy != "off" and controller.max_k > 0
    profile_path = None
    if speculative and controller_settings["policy"] == "adaptive":
        profile_path = str(profile_for_run(respec, model_path, drafter_dir, config, folder, max_num_seqs))
    restore_controller_state(config, folder / STATE_FILE)
    settings = RolloutSettings(
        speculative=speculative,
        drafter_dir=drafter_dir,
        max_k=controller.max_k,
        schedule=[(1, max_num_seqs, controller.max_k)],
        controller=controller_settings,
        profile_path=profile_path,
        state_path=str(folder / STATE_FILE),
        draft_sample_method=respec.drafter.sample_method,
        drafter_method=respec.drafter.method,
        history=dict(respec.drafter.history),
    )
    with open_dict(config):
        rollout = config.actor_rollout_ref.rollout
        custom = OmegaConf.to_container(rollout.custom, resolve=True) if rollout.get("custom") else {}
        custom[CUSTOM_KEY] = settings.to_dict()
        rollout.custom = custom
    return settings


def cut_self_draft(model_path: str, out_dir: Path, drafter: Any) -> Path:
    """The self-draft folder vLLM loads: the actor's first layers, over `draft_vocab_size` tokens if set.

    Before any rollout the draft vocabulary is the actor's special tokens plus its tokenizer's
    lowest ids (a BPE tokenizer numbers merges by frequency); `drafter.path` with a warmed-up
    drafter (`respec-verl demo --warmup-steps`) carries one chosen from the actor's answers.
    """
    from respec_verl.drafter.self_draft import pad_with_low_ids
    from respec_verl.verl_glue.self_draft_dir import write_self_draft_dir

    vocab = None
    if drafter.draft_vocab_size is not None:
        actor_config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        vocab_size = int(actor_config["vocab_size"])
        if drafter.draft_vocab_size > vocab_size:
            raise ValueError(
                f"actor_rollout_ref.respec.drafter.draft_vocab_size = {drafter.draft_vocab_size} is not valid for "
                f"{model_path}; allowed: null or 1..{vocab_size} (the actor's vocabulary)"
            )
        vocab = pad_with_low_ids(special_token_ids(actor_config), drafter.draft_vocab_size, vocab_size)
    return write_self_draft_dir(model_path, out_dir, drafter.self_draft_layers, draft_vocab=vocab)


def special_token_ids(model_config: dict) -> list[int]:
    """BOS, EOS and PAD ids named by a Hugging Face config (EOS may be a list)."""
    ids = []
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = model_config.get(key)
        ids += value if isinstance(value, list) else [value] if value is not None else []
    return [int(t) for t in ids]


def resume_folder(config: Any) -> Path | None:
    """The checkpoint folder verl will resume from (its `_load_checkpoint` rule), None for a fresh run."""
    mode = str(config.trainer.get("resume_mode", "auto"))
    if mode == "auto":
        from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

        found = find_latest_ckpt_path(os.path.abspath(str(config.trainer.default_local_dir)))
        return Path(found) if found else None
    if mode == "resume_path" and config.trainer.get("resume_from_path"):
        return Path(os.path.abspath(str(config.trainer.resume_from_path)))
    return None


def restore_controller_state(config: Any, state_path: Path) -> None:
    """On resume, start vLLM's controller from the state saved with the checkpoint (before vLLM starts)."""
    folder = resume_folder(config)
    saved = folder / STATE_FILE if folder else None
    if saved is not None and saved.exists():
        shutil.copy2(saved, state_path)
        logger.info("respec: controller state restored from %s", saved)


def profile_for_run(
    respec: RespecConfig, model_path: str, drafter_dir: str, config: Any, folder: Path, max_num_seqs: int
) -> Path:
    """The single-profile JSON the scheduler's controller reads: `respec.profile`, or measured now (cached)."""
    out = folder / "step_costs.json"
    if respec.profile:
        doc = json.loads(Path(respec.profile).read_text(encoding="utf-8"))
        profiles = doc.get("profiles", [doc])
        if len(profiles) != 1:
            keys = [p.get("key") for p in profiles]
            raise ValueError(
                f"actor_rollout_ref.respec.profile = {respec.profile!r} holds {len(profiles)} profiles {keys}; "
                "allowed: a file with exactly one (the one measured for this actor, drafter and machine)"
            )
        out.write_text(json.dumps(profiles[0]), encoding="utf-8")
        return out
    if out.exists():
        return out
    from respec_verl.verl_glue.vllm_profile import measure_in_child

    batch_sizes = sorted({min(2**i, max_num_seqs) for i in range(max_num_seqs.bit_length() + 1)})
    ks = list(range(1, respec.controller.max_k + 1))
    rollout = config.actor_rollout_ref.rollout
    logger.info("respec: measuring vLLM step costs for batch sizes %s and k 0-%d (once per run folder)",
                batch_sizes, ks[-1])
    return measure_in_child(out, model_path, drafter_dir, str(rollout.dtype), batch_sizes, ks,
                            float(rollout.temperature), respec.drafter.sample_method)


# How often the trainer polls verl's replay buffer for a finished rollout batch (verl: 2 s)
REPLAY_POLL_S = 0.1


class RespecPPOTrainerSync(PPOTrainerSync):
    """verl's sync PPO/GRPO trainer; with `actor_rollout_ref.respec.enable=true`, speculative rollouts too."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any):
        self.respec = RespecConfig.from_omegaconf(config.actor_rollout_ref.get("respec"))
        self.respec_settings = prepare_rollout(config, self.respec) if self.respec.enable else None
        super().__init__(config, *args, **kwargs)

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        if not self.respec.enable:
            return
        from verl.trainer.ppo.utils import Role

        from respec_verl.verl_glue.worker import RespecActorRolloutRefWorker

        for role in (Role.ActorRollout, Role.ActorRolloutRef):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(RespecActorRolloutRefWorker)

    def _build_replay_buffer(self):
        """verl's replay buffer, polled every `REPLAY_POLL_S` instead of every 2 s (respec on or off).

        The step waits for its rollouts by polling the buffer, so at 2 s `timing_s/gen` moves in
        2-second steps and a rollout that ends at 4.1 s is charged 6: on short rollouts that hides
        any speed-up, speculative or not. (docs/upstream/verl-replay-buffer-poll-interval.md)
        """
        buffer = super()._build_replay_buffer()
        if hasattr(buffer, "poll_interval"):
            buffer.poll_interval = min(buffer.poll_interval, REPLAY_POLL_S)
        return buffer

    def _update_actor(self, batch, metrics: dict):
        batch = super()._update_actor(batch, metrics)
        for name in [n for n in metrics if n.startswith("actor/respec/")]:
            metrics[name.removeprefix("actor/")] = metrics.pop(name)
        return batch

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        result = super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if self.respec.enable:
            metrics.update(self._respec_rollout_metrics(batch))
        return result

    def _respec_rollout_metrics(self, batch) -> dict[str, float]:
        import numpy as np
        import transfer_queue as tq
        from verl.trainer.ppo.ray_trainer import compute_spec_decode_metrics

        out: dict[str, float] = {}
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        fields = data.pop("extra_fields").tolist()
        if fields and all(isinstance(f, dict) and "spec_num_draft_tokens" in f for f in fields):
            mask = np.array([not tag.get("is_padding", False) for tag in batch.tags], dtype=bool)
            out.update(
                compute_spec_decode_metrics(
                    [f["spec_num_draft_tokens"] for f in fields],
                    [f["spec_num_accepted_tokens"] for f in fields],
                    [f["spec_num_verify_steps"] for f in fields],
                    mask,
                )
            )
        out.update(controller_metrics(self.respec_settings.state_path))
        return out

    def _save_checkpoint(self, *args: Any, **kwargs: Any):
        result = super()._save_checkpoint(*args, **kwargs)
        if self.respec.enable:
            state = Path(self.respec_settings.state_path)
            target = Path(self._respec_checkpoint_dir())
            if state.exists() and target.exists():
                shutil.copy2(state, target / STATE_FILE)
        return result

    def _respec_checkpoint_dir(self) -> str:
        return checkpoint_folder(self.config.trainer.default_local_dir, self.global_steps)


def controller_metrics(state_path: str | None) -> dict[str, float]:
    """`respec/controller/*` from the scheduler's state file: mean k chosen, share of plain steps, per batch size."""
    if not state_path or not os.path.exists(state_path):
        return {}
    try:
        doc = json.loads(Path(state_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    total = steps_k = plain = 0
    for b, ks in sorted(doc.get("choices", {}).items(), key=lambda kv: int(kv[0])):
        n_b = sum(ks.values())
        mean_b = sum(int(k) * n for k, n in ks.items()) / n_b if n_b else 0.0
        out[f"respec/controller/k_at_batch_{int(b)}"] = mean_b
        total += n_b
        steps_k += sum(int(k) * n for k, n in ks.items())
        plain += ks.get("0", 0)
    if total:
        out["respec/controller/k_mean"] = steps_k / total
        out["respec/controller/plain_fraction"] = plain / total
    out["respec/controller/observed_steps"] = float(doc.get("observed_steps", 0))
    return out


def install() -> None:
    """Make respec's trainer verl's "sync" trainer (respec off, it is verl's own PPOTrainerSync but for
    the replay buffer's poll interval)."""
    install_trainer("sync", RespecPPOTrainerSync)


install()
