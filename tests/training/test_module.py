"""The LightningModule's settings and a TJDConfig map onto each other."""

from dataclasses import asdict

from tjdnet.model import TJDConfig
from tjdnet.training.module import TJDLitModule


def test_module_settings_rebuild_the_same_config(tiny_lm_dir):
    config = TJDConfig(
        model=tiny_lm_dir,
        model_head="mps",
        horizon=3,
        rank=4,
        hidden_dim=16,
        train_mode="lora",
        lora_rank=4,
        lora_alpha=8,
        lora_layers=1,
        loss_mode="joint",
        joint_loss_lambda=2.5,
        use_memory_efficient_loss=True,
        token_conditioned=True,
    )
    rebuilt = TJDLitModule(**config.to_json()).model.config
    ignored = {"lora_target_modules"}  # derived from lora_layers when the model is built
    assert {k: v for k, v in asdict(rebuilt).items() if k not in ignored} == {
        k: v for k, v in asdict(config).items() if k not in ignored
    }
