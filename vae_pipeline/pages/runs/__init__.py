"""The pages of MLflow runs: `make compare` (templates/compare.html.j2, rendered by commands/compare.py)
and `make sweep` (templates/sweep.html.j2, by vae_pipeline/pages/sweep.py).

Their templates lie apart from the shared page set-up and look (vae_pipeline/pages/templates), which
the report stage reads: a change to these two pages reruns no stage.
"""
