"""Deploying gleanpipe to Google Cloud: settings, the command plan, its runner, the function source.

    settings.py  GLEANPIPE_DEPLOY_* settings (env vars and/or a KEY=VALUE file), checked
    plan.py      settings -> ordered list of gcloud/bq commands (argv lists), and the undeploy plan
    runner.py    prints a plan (dry run, no cloud calls) or runs it, failing early without auth
    package.py   builds the deployable function folder (main.py, requirements.txt, gleanpipe/)

``make deploy`` / ``make deploy DRY_RUN=1`` call ``infra/deploy.py``, a thin wrapper around
``python -m gleanpipe.deploy``. The logic lives in the package so it is tested with the rest.
"""
