"""Published figures to set beside this run's, each with the setup that produced it.

A reference has two parts:
  measure  what the number means: data set, pixel treatment, likelihood, estimator.
           Only when all of it matches this run is the row "comparable": the two
           numbers are then on the same scale and lower is better.
  recipe   how the published model was built and trained. A comparable row whose
           recipe also matches is a reproduction ("same_recipe"); otherwise the
           differences are listed, so a gap between the numbers can be read.
"""
from vae_pipeline.datasets import IMAGE_PIXELS

REFERENCES = [
    {
        "reference": "PyTorch examples, VAE (vae/main.py)",
        "source": "https://github.com/pytorch/examples/tree/main/vae",
        "figure": "test loss per image: BCE + KL, z drawn from q (the negative ELBO)",
        "value": 105.6,
        "metric": "neg_elbo",
        "measure": {"dataset": "mnist", "binarize": "none", "likelihood": "bernoulli"},
        "recipe": {"architecture": "784-400-20, relu", "epochs": 10, "batch_size": 128, "lr": 0.001,
                   "objective": "ELBO"},
    },
    {
        "reference": "Burda et al. 2015, Table 1: VAE, 1 stochastic layer",
        "source": "https://arxiv.org/abs/1509.00519",
        "figure": "test -log p(x), IWAE estimate with k = 5000",
        "value": 86.76,
        "metric": "iwae_nll",
        "measure": {"dataset": "mnist", "binarize": "dynamic", "likelihood": "bernoulli",
                    "iwae_samples": 5000},
        "recipe": {"architecture": "784-200-200-50, tanh", "epochs": 3280, "batch_size": 20,
                   "lr": "0.001 * 10^(-i/7) over 8 stages", "objective": "ELBO"},
    },
    {
        "reference": "Burda et al. 2015, Table 1: IWAE k = 50, 1 stochastic layer",
        "source": "https://arxiv.org/abs/1509.00519",
        "figure": "test -log p(x), IWAE estimate with k = 5000",
        "value": 84.78,
        "metric": "iwae_nll",
        "measure": {"dataset": "mnist", "binarize": "dynamic", "likelihood": "bernoulli",
                    "iwae_samples": 5000},
        "recipe": {"architecture": "784-200-200-50, tanh", "epochs": 3280, "batch_size": 20,
                   "lr": "0.001 * 10^(-i/7) over 8 stages", "objective": "IWAE bound, k = 50"},
    },
]


def this_run(params: dict) -> dict:
    """This run's setup, in the terms the references use."""
    t = params["train"]
    objective = "ELBO"
    if t["beta"] != 1:
        objective = f"beta-ELBO, beta = {t['beta']:g}"
    if t["kl_warmup_epochs"]:
        objective += f", KL warm-up over {t['kl_warmup_epochs']} epochs"
    return {
        "dataset": params["data"]["dataset"],
        "binarize": params["data"]["binarize"],
        "likelihood": t["likelihood"],
        "iwae_samples": params["evaluate"]["iwae_samples"],
        "architecture": "-".join(map(str, [IMAGE_PIXELS, *t["hidden_dims"], t["latent_dim"]])) + ", relu",
        "epochs": t["epochs"],
        "batch_size": t["batch_size"],
        "lr": t["lr"],
        "objective": objective,
    }


def compare(params: dict, metrics: dict) -> list[dict]:
    """One row per reference: its figure, this run's (only when comparable) and how the setups differ."""
    ours = this_run(params)
    rows = []
    for ref in REFERENCES:
        measure_diffs = [f"{key}: {ours[key]} here, {value} there"
                         for key, value in ref["measure"].items() if ours[key] != value]
        recipe_diffs = [f"{key}: {ours[key]} here, {value} there"
                        for key, value in ref["recipe"].items() if ours[key] != value]
        comparable = not measure_diffs
        rows.append({
            "reference": ref["reference"],
            "source": ref["source"],
            "figure": ref["figure"],
            "reference_value": ref["value"],
            "this_run": metrics[ref["metric"]] if comparable else None,
            "comparable": comparable,
            "same_recipe": comparable and not recipe_diffs,
            # What makes the numbers mean different things, then what makes the models differ.
            "differences": measure_diffs + recipe_diffs,
        })
    return rows
