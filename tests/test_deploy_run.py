"""`make deploy DRY_RUN=1` as a user runs it, the auth check, and the runner on real local commands."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gleanpipe.deploy.plan import Plan, Step, deploy_plan
from gleanpipe.deploy.runner import DeployError, check_cloud_cli, run_plan
from gleanpipe.deploy.settings import load_settings

from conftest import ROOT

ENV = {"GLEANPIPE_DEPLOY_PROJECT": "gp-test-123", "GLEANPIPE_DEPLOY_REGION": "europe-west1",
       "GLEANPIPE_DEPLOY_APPS": "org.example.toolbox"}
VENV = Path(sys.executable).parent.parent
CLOUD_TOOLS = ("gcloud", "bq", "gsutil", "curl", "wget")


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GLEANPIPE_", "CLOUDSDK_", "GOOGLE_", "MAKE", "MFLAGS"))}
    env.update(extra)
    return env


@pytest.fixture
def spies(tmp_path):
    """gcloud/bq/gsutil/curl/wget stand-ins that record any call and fail.

    A spy, not a fake: the only way to show that a dry run never runs a cloud command is to
    put something on PATH that would notice it.
    """
    folder, log = tmp_path / "spies", tmp_path / "cloud-calls.log"
    folder.mkdir()
    for tool in CLOUD_TOOLS:
        script = folder / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit 97\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder, log


def make(*args, env, cwd=ROOT):
    # -o: the venv stamp counts as up to date, so make never reinstalls from inside a test.
    return subprocess.run(["make", "--no-print-directory", "-o", f"{VENV}/.installed", *args, f"VENV={VENV}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_make_deploy_dry_run_prints_every_command_and_calls_nothing(tmp_path, spies):
    folder, log = spies
    build = tmp_path / "build"
    env = clean_env(PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", **ENV)
    result = make("deploy", "DRY_RUN=1", f"DEPLOY_BUILD_DIR={build}", env=env)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), log.read_text()  # not one cloud command ran
    out = result.stdout
    assert "gleanpipe deploy plan (DRY RUN: nothing is sent to Google Cloud)" in out
    plan = deploy_plan(load_settings(ENV), f"{build}/function", f"{build}/lifecycle.json")
    for number, step in enumerate(plan.steps, 1):
        assert f"{number:>3}. {step.title}\n     " in out
        assert f"     $ {step.render()}\n" in out
    assert len(plan.steps) == 26
    # the lifecycle file in words: pings and error records after raw_days, the debug index after 3 weeks
    for resource in ("bucket     gs://gp-test-123-gleanpipe-raw (uniform access, public access prevention enforced; "
                     "delete gleanpipe/raw/ and gleanpipe/errors/ after 90 days; delete gleanpipe/debug/ after 21 days)",
                     "dataset    gp-test-123:org_example_toolbox", "dataset    gp-test-123:_gleanpipe",
                     "account    gleanpipe-trigger@gp-test-123.iam.gserviceaccount.com",
                     "account    gleanpipe-cron@gp-test-123.iam.gserviceaccount.com",
                     "function   gleanpipe-deletions: private HTTP, retries pending deletion requests, runs as "
                     "gleanpipe-load@gp-test-123.iam.gserviceaccount.com",
                     "job        gleanpipe-deletions: Cloud Scheduler, '*/30 * * * *' (UTC), calls gleanpipe-deletions "
                     "as gleanpipe-cron@gp-test-123.iam.gserviceaccount.com"):
        assert resource in out
    assert '"age": 90' in out
    # The files the commands refer to were written locally.
    assert json.loads((build / "lifecycle.json").read_text())["rule"][0]["action"] == {"type": "Delete"}
    assert (build / "function" / "main.py").is_file() and (build / "function" / "requirements.txt").is_file()


def test_make_deploy_dry_run_with_a_settings_file_and_bad_settings(tmp_path, spies):
    folder, log = spies
    settings = tmp_path / "deploy.env"
    settings.write_text("GLEANPIPE_DEPLOY_PROJECT=from-file-42\nGLEANPIPE_DEPLOY_BUCKET=Bad.Bucket\n"
                        "GLEANPIPE_DEPLOY_REGION=europe-west\n")
    env = clean_env(PATH=f"{folder}{os.pathsep}{os.environ['PATH']}")
    result = make("deploy", "DRY_RUN=1", f"SETTINGS={settings}", f"DEPLOY_BUILD_DIR={tmp_path / 'b'}", env=env)
    assert result.returncode != 0
    assert "error: deploy settings are not valid:" in result.stderr
    assert "GLEANPIPE_DEPLOY_BUCKET: 'Bad.Bucket' is not a usable bucket name" in result.stderr
    assert "GLEANPIPE_DEPLOY_REGION: 'europe-west' is not a region name like us-central1" in result.stderr
    assert "commands:" not in result.stdout and not log.exists()
    settings.write_text("GLEANPIPE_DEPLOY_PROJECT=from-file-42\n")
    result = make("undeploy", "DRY_RUN=1", f"SETTINGS={settings}", env=env)
    assert result.returncode == 0, result.stderr
    assert "$ gcloud functions delete gleanpipe-load --gen2 --region=us-central1 --project=from-file-42 --quiet" \
        in result.stdout
    assert "  1. Delete Cloud Scheduler job gleanpipe-deletions\n" in result.stdout
    assert "$ gcloud scheduler jobs delete gleanpipe-deletions --location=us-central1 --project=from-file-42 " \
           "--quiet" in result.stdout
    assert "Kept, because they hold data: bucket gs://from-file-42-gleanpipe-raw" in result.stdout
    assert not log.exists()


def test_json_plan_is_the_argv_lists(tmp_path, spies):
    folder, _ = spies
    env = clean_env(PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", **ENV)
    result = subprocess.run([sys.executable, "infra/deploy.py", "deploy", "--dry-run", "--json",
                             "--build-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    plan = deploy_plan(load_settings(ENV), f"{tmp_path}/function", f"{tmp_path}/lifecycle.json")
    assert [s["argv"] for s in got["steps"]] == [list(s.argv) for s in plan.steps]
    assert list(got["files"]) == [f"{tmp_path}/lifecycle.json"]


def test_missing_project_fails_before_anything_else(tmp_path):
    result = subprocess.run([sys.executable, "infra/deploy.py", "deploy", "--build-dir", str(tmp_path / "b")],
                            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "GLEANPIPE_DEPLOY_PROJECT: missing; set it to your Google Cloud project id" in result.stderr
    assert not (tmp_path / "b").exists()


def test_deploy_without_the_cloud_cli_says_so(tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = clean_env(PATH=str(empty), **ENV)
    with pytest.raises(DeployError, match=r"gcloud and bq not found on PATH: install the Google Cloud CLI"):
        check_cloud_cli(env)
    result = subprocess.run([sys.executable, "infra/deploy.py", "deploy", "--build-dir", str(tmp_path / "b")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: gcloud and bq not found on PATH" in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed here")
def test_deploy_with_a_logged_out_gcloud_fails_early(tmp_path):
    # The real gcloud with an empty configuration folder: no account. The GCE metadata check is off so
    # that gcloud does not probe for a metadata server (no network use at all).
    env = clean_env(CLOUDSDK_CONFIG=str(tmp_path / "gcloud-config"), CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
                    CLOUDSDK_CORE_DISABLE_PROMPTS="1", **ENV)
    result = make("deploy", "DRY_RUN=0", f"DEPLOY_BUILD_DIR={tmp_path / 'b'}", env=env)  # 0: a real deploy
    assert result.returncode != 0
    assert "error: gcloud is not authenticated: no active account. Run `gcloud auth login`" in result.stderr
    assert "DRY RUN" not in result.stdout
    assert "[1/" not in result.stdout  # no step started
    assert not (tmp_path / "b").exists()


def fake_cloud_cli(folder: Path, gcloud_body: str) -> Path:
    """gcloud and bq stand-ins (no Google Cloud here): bq does nothing, gcloud runs ``gcloud_body``."""
    folder.mkdir()
    for tool, body in (("gcloud", gcloud_body), ("bq", "exit 0")):
        (folder / tool).write_text(f"#!/bin/sh\n{body}\n")
        (folder / tool).chmod(0o755)
    return folder


def test_an_access_token_counts_as_logged_in(tmp_path):
    # As in CI: no account, CLOUDSDK_AUTH_ACCESS_TOKEN set; gcloud's `auth list` shows no account then.
    tools = fake_cloud_cli(tmp_path / "bin", 'echo "gcloud $*" >> "$0.log"; exit 0')
    env = clean_env(PATH=f"{tools}:{os.environ['PATH']}", **ENV)
    with pytest.raises(DeployError, match="no active account"):
        check_cloud_cli(env)
    assert check_cloud_cli({**env, "CLOUDSDK_AUTH_ACCESS_TOKEN": "ya29.x"}) == "the access token in CLOUDSDK_AUTH_ACCESS_TOKEN"
    assert check_cloud_cli({**env, "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": "/run/token"}) == \
        "the access token in CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"
    # an empty one is no token (as a CI secret that is not set comes out): still logged out
    for token in ("CLOUDSDK_AUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"):
        with pytest.raises(DeployError, match="gcloud is not authenticated: no active account"):
            check_cloud_cli({**env, token: ""})


def test_ctrl_c_during_a_deploy_is_a_message_not_a_traceback(tmp_path):
    # gcloud: an account for `auth list`, then every step takes long enough to be interrupted.
    # `exec`: the kill of the step reaches the sleep, which would hold the output pipe on for 30 s.
    tools = fake_cloud_cli(tmp_path / "bin", '[ "$1" = auth ] && { echo me@example.com; exit 0; }\n'
                                             'touch "$0.started"; exec sleep 30')
    env = clean_env(PATH=f"{tools}:{os.environ['PATH']}", **ENV)
    # Ctrl-C as in a terminal, where SIGINT is not ignored: a test run started in the background by
    # a shell without job control ignores it, and Python's KeyboardInterrupt never came then.
    proc = subprocess.Popen([sys.executable, "infra/deploy.py", "deploy", "--build-dir", str(tmp_path / "b")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (tools / "gcloud.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tools / "gcloud.started").exists(), "the first step never ran"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "[1/" in out
    assert "interrupted: deploy stopped part-way. Run the same command again to finish it" in err
    assert "Traceback" not in err


def test_undeploy_goes_on_past_a_project_binding_that_is_already_gone(tmp_path):
    """A second `make undeploy`, or one after a manual clean-up: gcloud fails to remove a binding
    that is not there, and the undeploy must still delete the service accounts after it. The
    gcloud stand-in fails `remove-iam-policy-binding` as gcloud does and finds every resource."""
    from gleanpipe.deploy.plan import undeploy_plan

    tools = fake_cloud_cli(tmp_path / "bin", 'echo "$*" >> "$0.log"\n'
                                             'case "$*" in *remove-iam-policy-binding*) echo "ERROR: Policy binding '
                                             'with the specified principal, role, and condition not found!" >&2; '
                                             'exit 1;; esac\nexit 0')
    out = io.StringIO()
    run_plan(undeploy_plan(load_settings(ENV)), out, env=clean_env(PATH=f"{tools}:{os.environ['PATH']}"),
             retry_delay=0, sleep=lambda s: None)
    calls = (tools / "gcloud.log").read_text().splitlines()
    assert [c.split()[:3] for c in calls if "remove-iam-policy-binding" in c] == [
        ["projects", "remove-iam-policy-binding", "gp-test-123"]] * 2
    assert [c.split()[3] for c in calls if c.startswith("iam service-accounts delete")] == [
        f"gleanpipe-{role}@gp-test-123.iam.gserviceaccount.com" for role in ("submit", "load", "trigger", "cron")]
    assert out.getvalue().count("failed (exit 1), going on: the binding is already gone") == 2


# --- the runner, on real local commands ---------------------------------------------------------

def py(code: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, *args)


def test_runner_skips_captures_substitutes_retries_and_stops_at_a_failure(tmp_path):
    record, counter, after = tmp_path / "record.txt", tmp_path / "counter", tmp_path / "after-failure"
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    flaky = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
             "p.write_text(str(n + 1)); sys.exit(0 if n >= 2 else 1)")
    steps = [
        Step("read a value", py("print('noise'); print('svc-42@gs-project-accounts.example')"), capture="AGENT"),
        Step("exists already", py("import sys; sys.exit(5)"), skip_if=py("pass")),
        Step("nothing to remove", py("import sys; sys.exit(6)"), only_if=py("import sys; sys.exit(1)")),
        Step("use the value", py(append, str(record), "--member=serviceAccount:${AGENT}")),
        Step("flaky grant", py(flaky, str(counter)), attempts=3),
        Step("may fail", py("import sys; sys.exit(3)"), tolerate="already gone"),
        Step("broken", py("import sys; sys.stderr.write('PERMISSION_DENIED: boom\\n'); sys.exit(4)")),
        Step("never reached", py(append, str(after), "ran")),
    ]
    plan = Plan("deploy", load_settings(ENV), steps, {str(tmp_path / "f" / "rules.json"): "{}\n"},
                ["endpoint is ${AGENT}"])
    out, sleeps = io.StringIO(), []  # sleeps recorded, not slept: the delays are what is checked
    with pytest.raises(DeployError) as exc:
        run_plan(plan, out, retry_delay=7, sleep=sleeps.append)
    message = str(exc.value)
    assert message.startswith("step 7/8 failed (exit 4): broken\n")
    assert "PERMISSION_DENIED: boom" in message and "Fix the cause and run the same command again" in message
    assert record.read_text() == "--member=serviceAccount:svc-42@gs-project-accounts.example\n"
    assert counter.read_text() == "3" and sleeps == [7, 7]
    assert not after.exists()
    assert (tmp_path / "f" / "rules.json").read_text() == "{}\n"
    text = out.getvalue()
    assert "[2/8] exists already\n      already there, skipped\n" in text
    assert "[3/8] nothing to remove\n      nothing to do, skipped\n" in text
    assert "${AGENT} = svc-42@gs-project-accounts.example" in text
    assert "failed (exit 3), going on: already gone" in text


def test_runner_returns_captures_and_fills_notes(tmp_path):
    plan = Plan("deploy", load_settings(ENV), [Step("url", py("print('https://submit.example')"), capture="URL")],
                {}, ["point the SDK at ${URL}"])
    out = io.StringIO()
    assert run_plan(plan, out, retry_delay=0, sleep=lambda s: None) == {"URL": "https://submit.example"}
    assert "note: point the SDK at https://submit.example\n" in out.getvalue()
    early = Plan("deploy", load_settings(ENV), [Step("too early", py("pass", "${URL}"))], {}, [])
    with pytest.raises(DeployError, match=r"\$\{URL\} is used before a step has read it"):
        run_plan(early, io.StringIO())
    empty = Plan("deploy", load_settings(ENV), [Step("silent", py("pass"), capture="URL")], {}, [])
    with pytest.raises(DeployError, match=r"printed nothing; expected \$\{URL\}"):
        run_plan(empty, io.StringIO())


# --- the plan against the real Google Cloud CLI's own argument parsers ---------------------------

def _no_account_env(tmp_path) -> dict[str, str]:
    # An empty gcloud configuration (no account), no GCE metadata probe, no update check and no usage
    # reporting: gcloud and bq parse the arguments, then stop at "no active account" before any call.
    return clean_env(CLOUDSDK_CONFIG=str(tmp_path / "gcloud-config"), CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
                     CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1", CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
                     CLOUDSDK_CORE_DISABLE_PROMPTS="1")


VERBS = {"create", "describe", "update", "add-iam-policy-binding", "remove-iam-policy-binding", "deploy", "delete",
         "add-invoker-policy-binding", "service-agent", "mk", "query"}


def _shape(argv) -> tuple:
    """Command words and flag names: commands of the same shape are checked once (each gcloud start takes
    seconds)."""
    words = []
    for item in argv:
        if not item.startswith("-"):
            words.append(item)
            if item in VERBS:
                break
    flags = frozenset(a.split("=", 1)[0] for a in argv if a.startswith("--"))
    return (*words, flags)


@pytest.mark.skipif(shutil.which("gcloud") is None or shutil.which("bq") is None,
                    reason="the Google Cloud CLI is not installed here")
def test_every_kind_of_command_in_the_plans_is_accepted_by_gcloud_and_bq(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gleanpipe.deploy.package import build_function_source
    from gleanpipe.deploy.plan import undeploy_plan
    from gleanpipe.deploy.runner import write_files

    settings = load_settings({**ENV, "GLEANPIPE_DEPLOY_BUILD_SERVICE_ACCOUNT": "b-1234@gp-test-123.iam.gserviceaccount.com"})
    plan = deploy_plan(settings, str(tmp_path / "function"), str(tmp_path / "lifecycle.json"))
    write_files(plan)
    build_function_source(tmp_path / "function")
    kinds: dict[tuple, list[str]] = {}
    for step in plan.steps + undeploy_plan(settings).steps:
        for argv in (step.argv, step.skip_if, step.only_if):
            # `services enable` is left out: it resolves a host name before it looks for an account.
            if argv and argv[1] != "services":
                kinds.setdefault(_shape(argv), [a.replace("${GCS_SERVICE_AGENT}", "service-1@gs-project-accounts."
                                                          "iam.gserviceaccount.com")
                                                .replace("${DELETIONS_URL}", "https://gleanpipe-deletions-x.a.run.app")
                                                for a in argv])
    env = _no_account_env(tmp_path)

    def run(argv):
        return argv, subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    # A control that must fail: shows this check notices a flag gcloud does not know.
    control = ["gcloud", "functions", "deploy", "x", "--region=us-central1", "--trigger-bukket=b"]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, [control, *kinds.values()]))
    (_, bad), results = results[0], results[1:]
    assert bad.returncode == 2 and "unrecognized arguments: --trigger-bukket=b" in bad.stderr, bad.stderr
    assert len(results) == 22
    for argv, result in results:
        # Exit 2 and "unrecognized arguments" / "Unknown command line flag" would mean a wrong flag.
        assert result.returncode == 1, (argv, result.stderr)
        assert "You do not currently have an active account selected" in result.stderr, (argv, result.stderr)
