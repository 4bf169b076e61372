"""Fine-tune the shipped PushT model's predictor and embeddings on demonstration-like data (a CPU
experiment: does the data the model was trained on explain its prediction errors on these goals?).

The encoder stays frozen unless ENCODER_LR > 0, and the decoder is left out of training (it is
kept as shipped). Teacher forcing as in the recipe, at a CPU-sized budget; the model directory
written is the shipped one with new predictor and embedding weights (and encoder weights, if
trained), so `wmquant plan`, `wmquant diagnose` and `block_motion.py` take it as
`model_name=OUT/model`.
Usage: python docs/pusht_diagnosis/finetune_expert.py DATA OUT [EPISODES=300] [STEPS=900] [BATCH=64] [LR=1e-4] [START=pusht] [ROLLOUT=0] [FINAL_NORM=1] [ENCODER_LR=0] [ANCHOR=1] [REGULARIZER=anchor]
(START: the model to fine-tune, a shipped name or a model directory such as an earlier OUT/model;
ROLLOUT: K > 0 adds the recipe's K-step rollout loss, `training.rollout_steps`, to teacher forcing;
FINAL_NORM=0 drops the predictor's final LayerNorm before fine-tuning (`model.predictor.final_norm`);
ENCODER_LR > 0 trains the encoder too (`model.train_encoder`, `training.encoder_lr`), held to the
start model's geometry and position by the anchor of weight ANCHOR (`training.encoder_anchor_weight`),
or, with REGULARIZER=sigreg, end to end with SIGReg of weight ANCHOR instead (`training.encoder_regularizer`,
`training.sigreg_weight`);
DATA: `wmquant data --env pusht --out DATA --episodes 2000 --seed 0 --render-size 64 --video pth`,
whose validation split holds the shipped goals; only its training split is read)."""
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from wmquant.data import load_dataset
from wmquant.models.checkpoint import load_world_model, model_directory
from wmquant.training.batches import EpisodeTensors
from wmquant.training.world_model import WorldModelTrainConfig, train_world_model


class FirstEpisodes:
    """The first `count` episodes of a dataset split."""

    def __init__(self, dataset, count):
        self.dataset, self.count = dataset, min(count, len(dataset))
        self.normalization = dataset.normalization

    def __len__(self):
        return self.count

    def episode(self, index):
        return self.dataset.episode(index)


def main():
    data, out = sys.argv[1], Path(sys.argv[2])
    episodes, steps, batch, lr = (int(sys.argv[3]) if len(sys.argv) > 3 else 300, int(sys.argv[4]) if len(sys.argv) > 4 else 900,
                                  int(sys.argv[5]) if len(sys.argv) > 5 else 64, float(sys.argv[6]) if len(sys.argv) > 6 else 1e-4)
    start_model = sys.argv[7] if len(sys.argv) > 7 else "pusht"
    rollout_steps = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    final_norm = (int(sys.argv[9]) if len(sys.argv) > 9 else 1) != 0
    encoder_lr = float(sys.argv[10]) if len(sys.argv) > 10 else 0.0
    anchor = float(sys.argv[11]) if len(sys.argv) > 11 else 1.0
    regularizer = sys.argv[12] if len(sys.argv) > 12 else "anchor"
    torch.manual_seed(0)
    model, config = load_world_model(start_model)
    dataset = load_dataset("pusht", data, split="train")
    shipped = config["planning"]["normalization"]
    ours = dataset.normalization.as_dict()
    for key in shipped:  # the model was trained with the official constants; the fine-tune must use the same
        assert torch.allclose(torch.tensor(shipped[key]), torch.tensor(ours[key]), atol=1e-6), key
    start = time.perf_counter()
    train = EpisodeTensors.from_dataset(FirstEpisodes(dataset, episodes))
    decoder, model.decoder = model.decoder, None  # not trained here: no frames are read after encoding
    if not final_norm:
        model.predictor.norm = nn.Identity()
    model.train_encoder = encoder_lr > 0
    model.encoder.requires_grad_(model.train_encoder)
    cfg = WorldModelTrainConfig(steps=steps, batch_size=batch, predictor_lr=lr, action_encoder_lr=lr, decoder_lr=lr,
                                warmup_fraction=0.05, amp_bf16=False, log_every=max(1, steps // 10), seed=0,
                                rollout_steps=rollout_steps, encoder_lr=encoder_lr, encoder_regularizer=regularizer,
                                encoder_anchor_weight=anchor, sigreg_weight=anchor)
    log = []
    train_world_model(model, train, None, int(config["model"]["img_size"]), cfg, log=log.append, progress=False)
    model.decoder = decoder
    model.train_encoder = False
    shutil.copytree(model_directory(start_model), out / "model", dirs_exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model" / "model.safetensors"))
    if not final_norm:
        config_path = out / "model" / "config.yaml"
        saved = yaml.safe_load(config_path.read_text())
        saved["model"]["predictor"]["final_norm"] = False
        config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    summary = {"start": str(start_model), "rollout_steps": rollout_steps, "final_norm": final_norm,
               "encoder_lr": encoder_lr, "encoder_regularizer": regularizer, "regularizer_weight": anchor, "episodes": len(train.lengths), "frames": int(train.lengths.sum()), "steps": steps, "batch_size": batch,
               "lr": lr, "seconds": round(time.perf_counter() - start, 1), "log": log}
    (out / "finetune.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), "first / last z loss:",
          round(log[0]["train/z_loss"], 4), round(log[-1]["train/z_loss"], 4))


if __name__ == "__main__":
    main()
