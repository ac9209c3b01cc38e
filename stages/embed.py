"""Stage embed: encode the train and test images, saving mu, log sigma^2 and the label.

One parquet file per split, columns mu_0..mu_{d-1}, logvar_0..logvar_{d-1}, label.
The later stages use z = mu, as the article does for its latent map. This stage logs nothing
to MLflow: importing MLflow would cost it 2-3 s on the pipeline's critical path, and what it
could log (the mean posterior variance, the active units) is the evaluate stage's.
"""
import logging

import pandas as pd
import torch

from vae_pipeline.files import project_path, replace_together
from vae_pipeline.ml.data import dataset_dir, load_images
from vae_pipeline.ml.model import load_model, setup_torch
from vae_pipeline.outputs import latent_columns
from vae_pipeline.params import Pipeline

log = logging.getLogger("embed")


@torch.no_grad()
def encode(model, x, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [model.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu()


def run(params: Pipeline | dict) -> dict:
    params = Pipeline.of(params)
    device = setup_torch(params.train.device, params.train.threads)
    model, config = load_model(project_path(params.paths.model_dir), device)
    out_dir, raw = project_path(params.paths.embeddings_dir), dataset_dir(params.paths, params.data)
    # Both splits are encoded before either is written: bad data in the second
    # split must not leave the first one's file behind.
    tables = {}
    for split in ("train", "test"):
        x, labels = load_images(params.data, raw, split, device)
        mu, logvar = encode(model, x, params.embed.batch_size)
        columns = torch.cat([mu, logvar], 1).numpy().T   # mu_0.., then logvar_0..
        tables[split] = pd.DataFrame({**dict(zip(latent_columns(mu.shape[1]), columns)), "label": labels})
    outputs = {split: out_dir / f"{split}.parquet" for split in tables}
    with replace_together(*outputs.values()) as staged:   # both files new, or both as they were
        for table, tmp in zip(tables.values(), staged):
            table.to_parquet(tmp, index=False)
    for split, path in outputs.items():
        log.info("%s: %d rows, latent dim %d", path, len(tables[split]), config["latent_dim"])
    return outputs


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.params import load_params

    main(lambda: run(load_params()))
