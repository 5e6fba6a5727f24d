"""Print a plan (dry run: no cloud call, not even gcloud itself) or run it step by step.

Running needs the Google Cloud CLI (gcloud and bq) with an active account; both are checked
first, locally (``gcloud auth list`` reads the CLI's own configuration), so a missing login is
reported before anything is changed.

Idempotence, step by step: ``services enable``, ``add-iam-policy-binding``, GRANT,
``buckets update`` and ``functions deploy`` are create-or-update by nature; service accounts
and the bucket are created only when their ``describe`` fails (``skip_if``); datasets use
``bq mk --force``, which keeps an existing dataset. So ``make deploy`` can be run again after a
failure or a settings change.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from .plan import ROLES, Plan, Step, lifecycle_rules

PLACEHOLDER_RE = re.compile(r"\$\{([A-Z_]+)\}")


class DeployError(RuntimeError):
    """A precondition or a step failed; the message says which and what to do."""


def check_cloud_cli(env: dict[str, str] | None = None) -> str:
    """The active gcloud account (or the access token gcloud will use), or DeployError if the CLI
    is missing or logged out."""
    env = dict(os.environ if env is None else env)
    path = env.get("PATH", os.defpath)
    missing = [tool for tool in ("gcloud", "bq") if shutil.which(tool, path=path) is None]
    if missing:
        raise DeployError(
            f"{' and '.join(missing)} not found on PATH: install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install), then run `gcloud auth login`. "
            "`make deploy DRY_RUN=1` prints the plan without it."
        )
    for token in ("CLOUDSDK_AUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"):
        if env.get(token):  # gcloud and bq use it instead of an account (CI); `auth list` shows none
            return f"the access token in {token}"
    try:
        result = subprocess.run(
            [shutil.which("gcloud", path=path), "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"],
            capture_output=True, text=True, env=env, timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise DeployError("`gcloud auth list` did not answer within 120 s") from None
    account = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    if result.returncode != 0 or not account:
        # Without an account gcloud exits 0 and prints nothing; stderr only matters when it failed.
        detail = f" ({result.stderr.strip().splitlines()[-1]})" if result.returncode and result.stderr.strip() else ""
        raise DeployError(
            "gcloud is not authenticated: no active account" + detail + ". Run `gcloud auth login` "
            "(or `gcloud auth activate-service-account --key-file=KEY.json`), then `make deploy` again. "
            "`make deploy DRY_RUN=1` prints the plan without logging in."
        )
    return account


def substitute(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    def one(item: str) -> str:
        def repl(m: re.Match) -> str:
            if m.group(1) not in values:
                raise DeployError(f"{m.group(0)} is used before a step has read it")
            return values[m.group(1)]

        return PLACEHOLDER_RE.sub(repl, item)

    return [one(item) for item in argv]


def write_files(plan: Plan) -> None:
    for path, content in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content, encoding="utf-8")


def print_plan(plan: Plan, out: TextIO, extra: dict[str, str] | None = None) -> None:
    """Every resource and command, in order, readable and copy-pasteable."""
    s = plan.settings
    w = out.write
    w(f"gleanpipe {plan.action} plan (DRY RUN: nothing is sent to Google Cloud)\n\n")
    w(f"project {s.project}, region {s.region}, BigQuery location {s.bq_location}\n")
    if plan.action == "deploy":
        w("resources:\n")
        rules = lifecycle_rules(s)["rule"]  # what the lifecycle file says, in words
        said = [f"{'delete' if r['action']['type'] == 'Delete' else 'archive'} "
                f"{' and '.join(p.rstrip('/') + '/' for p in r['condition']['matchesPrefix'])} after "
                f"{r['condition']['age']} days" for r in rules]
        w(f"  bucket     gs://{s.bucket} (uniform access, public access prevention enforced; "
          f"{'; '.join(said)})\n")
        for role in ROLES:
            w(f"  account    {s.service_account(role)}\n")
        for dataset in s.datasets:
            w(f"  dataset    {s.project}:{dataset}\n")
        w(f"  function   {s.function_name('submit')}: public HTTP, GLEANPIPE_STORE_URL={s.store_url}\n")
        w(f"  function   {s.function_name('load')}: {s.bucket} object finalized -> load, retried, "
          f"GLEANPIPE_WAREHOUSE_URL={s.warehouse_url}\n")
        w(f"  function   {s.function_name('deletions')}: private HTTP, retries pending deletion requests, "
          f"runs as {s.service_account('load')}\n")
        w(f"  job        {s.function_name('deletions')}: Cloud Scheduler, '{s.deletions_schedule}' (UTC), "
          f"calls {s.function_name('deletions')} as {s.service_account('cron')}\n")
        w("grants:\n")
        for g in plan.grants:
            w(f"  {g.scope:<8} {g.resource:<40} {g.role:<32} {g.member}\n")
    for key, value in (extra or {}).items():
        w(f"{key}: {value}\n")
    for path, content in plan.files.items():
        w(f"file {path}:\n")
        w("".join(f"    {line}\n" for line in content.splitlines()))
    w("\ncommands:\n")
    for number, step in enumerate(plan.steps, 1):
        w(f"{number:>3}. {step.title}\n")
        if step.skip_if:
            w(f"     skipped when this succeeds: {shlex.join(step.skip_if)}\n")
        if step.only_if:
            w(f"     run only when this succeeds: {shlex.join(step.only_if)}\n")
        w(f"     $ {step.render()}\n")
        if step.capture:
            w(f"     its output is ${{{step.capture}}}\n")
        if step.attempts > 1:
            w(f"     tried up to {step.attempts} times (IAM changes take a while to propagate)\n")
        if step.tolerate:
            w(f"     a failure is reported and the plan goes on: {step.tolerate}\n")
        if step.why:
            w(f"     why: {step.why}\n")
    if plan.notes:
        w("\nnotes:\n")
        w("".join(f"  - {note}\n" for note in plan.notes))


def run_plan(plan: Plan, out: TextIO = sys.stdout, *, env: dict[str, str] | None = None,
             retry_delay: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Run every step in order; stop at the first failure that is not tolerated. Returns captured values."""
    env = dict(os.environ if env is None else env)
    values: dict[str, str] = {}
    write_files(plan)
    total = len(plan.steps)
    for number, step in enumerate(plan.steps, 1):
        out.write(f"[{number}/{total}] {step.title}\n")
        out.flush()
        if step.skip_if and _quiet(substitute(step.skip_if, values), env) == 0:
            out.write("      already there, skipped\n")
            continue
        if step.only_if and _quiet(substitute(step.only_if, values), env) != 0:
            out.write("      nothing to do, skipped\n")
            continue
        argv = substitute(step.argv, values)
        out.write(f"      $ {shlex.join(argv)}\n")
        out.flush()
        result = _attempts(step, argv, env, out, retry_delay, sleep)
        if result.returncode != 0:
            if step.tolerate:
                out.write(f"      failed (exit {result.returncode}), going on: {step.tolerate}\n")
                continue
            raise DeployError(
                f"step {number}/{total} failed (exit {result.returncode}): {step.title}\n"
                f"  command: {shlex.join(argv)}\n"
                + (f"  output: {result.stderr.strip()[-2000:]}\n" if result.stderr else "")
                + "Fix the cause and run the same command again: steps already done are skipped or unchanged."
            )
        if step.capture:
            value = (result.stdout or "").strip()
            if not value:
                raise DeployError(f"step {number}/{total} ({step.title}) printed nothing; expected ${{{step.capture}}}")
            values[step.capture] = value.splitlines()[-1].strip()
            out.write(f"      ${{{step.capture}}} = {values[step.capture]}\n")
    for note in plan.notes:
        out.write(f"note: {PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), note)}\n")
    return values


def _quiet(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode


def _attempts(step: Step, argv: list[str], env, out: TextIO, retry_delay: float, sleep) -> subprocess.CompletedProcess:
    for attempt in range(1, step.attempts + 1):
        # stdout is kept for captures; stderr is kept to quote it on failure (gcloud reports there).
        result = subprocess.run(argv, stdout=subprocess.PIPE if step.capture else None, stderr=subprocess.PIPE,
                                text=True, env=env)
        if result.stderr:
            out.write("".join(f"      | {line}\n" for line in result.stderr.rstrip().splitlines()[-20:]))
        if result.returncode == 0 or attempt == step.attempts:
            return result
        out.write(f"      exit {result.returncode}; trying again in {retry_delay:.0f} s "
                  f"(attempt {attempt + 1} of {step.attempts})\n")
        out.flush()
        sleep(retry_delay)
    raise AssertionError("unreachable")
