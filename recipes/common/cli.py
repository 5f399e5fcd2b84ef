"""The LightningCLI shared by the recipes: automatic precision, linked arguments, derived quantities at start."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info


def auto_precision(accelerator: object) -> str:
    """bf16 mixed precision on GPUs that have bf16 tensor cores (Ampere, 8.0, and newer), fp16 mixed precision on older
    GPUs (Turing), full fp32 on CPUs."""
    on_cpu = isinstance(accelerator, str) and accelerator == "cpu"
    if on_cpu or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.get_device_capability() >= (8, 0) else "16-mixed"


class RecipeCLI(LightningCLI):
    """LightningCLI with the recipes' conventions.

    - ``trainer.precision`` left unset (null) is chosen per machine by :func:`auto_precision`.
    - ``model.block_size`` follows ``data.block_size``.
    - Before fit, parameters, global batch and tokens per step are printed.
    - The config is saved next to the logs, replacing a config saved there by an earlier run.
    """

    def __init__(self, model_class, datamodule_class, args=None, run: bool = True) -> None:
        super().__init__(
            model_class,
            datamodule_class,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,  # the models' own AdamW and schedule, not --optimizer/--lr_scheduler
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.block_size", "model.block_size")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            config.trainer.precision = auto_precision(config.trainer.accelerator)

    def before_fit(self) -> None:
        trainer, model, data = self.trainer, self.model, self.datamodule
        global_batch = data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        tokens_per_step = global_batch * data.block_size
        net = model.model
        block = net.blocks[0].attn
        lines = [
            f"Model: {net.num_parameters():,} parameters; {len(net.blocks)} layers, width {block.embed_dim}, "
            f"{block.num_heads} heads ({block.num_kv_heads} key/value) of dim {block.head_dim}; "
            f"{model.hparams.attention} attention, {'causal' if net.causal else 'bidirectional'}",
            f"Precision: {trainer.precision}",
            f"Global batch: {global_batch} sequences = {data.batch_size} per device x {trainer.num_devices} devices "
            f"x {trainer.num_nodes} nodes x {trainer.accumulate_grad_batches} accumulation",
            f"Tokens per step: {tokens_per_step:,} ({global_batch} x {data.block_size})",
        ]
        if trainer.max_steps > 0:
            lines.append(f"Training: {trainer.max_steps} steps = {trainer.max_steps * tokens_per_step:,} tokens")
        rank_zero_info("\n".join(lines))
