#!/usr/bin/env bash
# GRPO on GSM8K with respec on, one 8-GPU node: Qwen2.5-7B-Instruct actor, FSDP2, vLLM rollout.
# Untested by us (our CI has no GPU); the CPU path of the same recipe runs in tests/test_verl_e2e.py.
# Data: verl's examples/data_preprocess/gsm8k.py writes $HOME/data/gsm8k/{train,test}.parquet.
set -xeuo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA=${DATA:-$HOME/data/gsm8k}
RECIPE_DIR=$(cd "$(dirname "$0")" && pwd)/config

python -m verl.trainer.main_ppo \
    --config-path "$RECIPE_DIR" --config-name respec_grpo \
    data.train_files="$DATA/train.parquet" data.val_files="$DATA/test.parquet" \
    data.train_batch_size=256 data.max_prompt_length=512 data.max_response_length=1024 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.strategy=fsdp2 \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.respec.enable=true \
    actor_rollout_ref.respec.drafter.self_draft_layers=4 \
    actor_rollout_ref.respec.controller.max_k=4 \
    trainer.n_gpus_per_node=8 trainer.nnodes=1 \
    trainer.logger='["console","wandb"]' trainer.project_name=respec_grpo \
    trainer.experiment_name=qwen2_5_7b_gsm8k_respec \
    trainer.save_freq=20 trainer.test_freq=5 trainer.total_epochs=15 "$@"
