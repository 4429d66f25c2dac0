"""The LightningModule's arguments and a TJDConfig map onto each other."""

from dataclasses import asdict

from tjdnet.model import TJDConfig
from tjdnet.training.module import TJDLitModule, config_hparams


def test_config_hparams_rebuild_the_same_config(tiny_lm_dir):
    config = TJDConfig(
        base_model=tiny_lm_dir,
        head="mps",
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
    rebuilt = TJDLitModule(**config_hparams(config)).model.config
    ignored = {"lora_target_modules"}  # derived from lora_layers when the model is built
    assert {k: v for k, v in asdict(rebuilt).items() if k not in ignored} == {
        k: v for k, v in asdict(config).items() if k not in ignored
    }
