"""`make deploy`: the plan of gcloud/bq commands, its settings, and least privilege.

The plan is asserted on its argv lists (what would run). Nothing here talks to Google Cloud.
"""

from __future__ import annotations

import json

import pytest

from gleanpipe.config import SETTINGS
from gleanpipe.deploy.plan import PROJECT_LEVEL_GRANTS, deploy_plan, lifecycle_rules, undeploy_plan
from gleanpipe.deploy.settings import DeploySettingsError, load_settings

from conftest import ROOT

PROJECT = "gp-test-123"
BUCKET = "gp-test-123-gleanpipe-raw"
ENV = {
    "GLEANPIPE_DEPLOY_PROJECT": PROJECT,
    "GLEANPIPE_DEPLOY_REGION": "europe-west1",
    "GLEANPIPE_DEPLOY_APPS": "org.example.toolbox, org-example-other",
}
SA = {role: f"gleanpipe-{role}@{PROJECT}.iam.gserviceaccount.com" for role in ("submit", "load", "trigger", "cron")}
GCS_AGENT = "serviceAccount:${GCS_SERVICE_AGENT}"


def make_plan(**env):
    settings = load_settings({**ENV, **env})
    return deploy_plan(settings, "build/deploy/function", "build/deploy/lifecycle.json")


def commands(plan, *prefix):
    """argv lists that start with prefix."""
    return [list(s.argv) for s in plan.steps if tuple(s.argv[: len(prefix)]) == prefix]


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def deploy_of(plan, name):
    (argv,) = [a for a in commands(plan, "gcloud", "functions", "deploy") if a[3] == name]
    return argv


def env_of(argv):
    return dict(item.split("=", 1) for item in flag(argv, "set-env-vars").split(","))


# --- resources ---------------------------------------------------------------------------------

def test_plan_creates_exactly_these_resources():
    plan = make_plan()
    assert commands(plan, "gcloud", "services", "enable")[0][3:14] == [
        "cloudfunctions.googleapis.com", "run.googleapis.com", "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com", "eventarc.googleapis.com", "pubsub.googleapis.com",
        "storage.googleapis.com", "bigquery.googleapis.com", "iam.googleapis.com", "logging.googleapis.com",
        "cloudscheduler.googleapis.com"]
    assert [a[4] for a in commands(plan, "gcloud", "iam", "service-accounts", "create")] == [
        "gleanpipe-submit", "gleanpipe-load", "gleanpipe-trigger", "gleanpipe-cron"]
    assert [a[4] for a in commands(plan, "gcloud", "storage", "buckets", "create")] == [f"gs://{BUCKET}"]
    assert [a[-1] for a in commands(plan, "bq") if "mk" in a] == [
        f"{PROJECT}:org_example_other", f"{PROJECT}:org_example_toolbox", f"{PROJECT}:_gleanpipe"]
    assert [a[3] for a in commands(plan, "gcloud", "functions", "deploy")] == [
        "gleanpipe-submit", "gleanpipe-load", "gleanpipe-deletions"]
    assert [a[5] for a in commands(plan, "gcloud", "scheduler", "jobs", "create", "http")] == ["gleanpipe-deletions"]
    # Nothing is ever deleted by a deploy.
    assert not [s for s in plan.steps if {"delete", "rm", "remove-iam-policy-binding"} & set(s.argv)]


def test_bucket_is_private_uniform_regional_with_lifecycle():
    plan = make_plan()
    (create,) = commands(plan, "gcloud", "storage", "buckets", "create")
    (update,) = commands(plan, "gcloud", "storage", "buckets", "update")
    for argv in (create, update):
        assert "--uniform-bucket-level-access" in argv
        assert "--public-access-prevention" in argv
        assert "--no-public-access-prevention" not in argv
        assert flag(argv, "lifecycle-file") == "build/deploy/lifecycle.json"
    assert flag(create, "location") == "europe-west1"
    rules = json.loads(plan.files["build/deploy/lifecycle.json"])
    assert rules == {"rule": [
        {"action": {"type": "Delete"}, "condition": {"age": 90, "matchesPrefix": ["gleanpipe/raw/", "gleanpipe/errors/"]}},
        # the debug index: gone once /debug stops listing it (GLEANPIPE_DEBUG_RETENTION_HOURS, 504 h)
        {"action": {"type": "Delete"}, "condition": {"age": 21, "matchesPrefix": ["gleanpipe/debug/"]}}]}
    # The create is skipped when the bucket exists; the update re-applies the settings either way.
    (step,) = [s for s in plan.steps if s.argv[:4] == ("gcloud", "storage", "buckets", "create")]
    assert step.skip_if == ("gcloud", "storage", "buckets", "describe", f"gs://{BUCKET}", f"--project={PROJECT}",
                            "--format=value(name)")


def test_lifecycle_archive_and_days_settings():
    settings = load_settings({**ENV, "GLEANPIPE_DEPLOY_RAW_ACTION": "archive", "GLEANPIPE_DEPLOY_RAW_DAYS": "30",
                              "GLEANPIPE_DEPLOY_STORE_PREFIX": "pings/prod"})
    assert lifecycle_rules(settings) == {"rule": [
        {"action": {"type": "SetStorageClass", "storageClass": "ARCHIVE"},
         "condition": {"age": 30, "matchesPrefix": ["pings/prod/raw/", "pings/prod/errors/"],
                       "matchesStorageClass": ["STANDARD"]}},
        {"action": {"type": "Delete"}, "condition": {"age": 21, "matchesPrefix": ["pings/prod/debug/"]}}]}


def test_no_public_or_broad_member_anywhere_but_the_submit_invoker():
    plan = make_plan()
    everything = " ".join(" ".join(s.argv) for s in plan.steps)
    assert "allUsers" not in everything and "allAuthenticatedUsers" not in everything
    assert "roles/owner" not in everything and "roles/editor" not in everything
    assert "set-iam-policy" not in everything  # only additive bindings, never a whole policy
    for argv in commands(plan, "gcloud", "storage", "buckets"):
        assert not [a for a in argv if a.startswith("--member=") and "allUsers" in a or "allAuthenticated" in a]
    public = [a for a in commands(plan, "gcloud", "functions", "deploy") if "--allow-unauthenticated" in a]
    assert [a[3] for a in public] == ["gleanpipe-submit"]
    assert "--no-allow-unauthenticated" in deploy_of(plan, "gleanpipe-load")
    assert "--no-allow-unauthenticated" in deploy_of(plan, "gleanpipe-deletions")
    assert not [g for g in plan.grants if g.member in ("allUsers", "allAuthenticatedUsers")
                and g.resource != "gleanpipe-submit"]


def test_project_level_roles_are_exactly_the_justified_ones():
    plan = make_plan()
    project_bindings = sorted(
        (flag(a, "member"), flag(a, "role")) for a in commands(plan, "gcloud", "projects", "add-iam-policy-binding"))
    assert project_bindings == sorted([
        (f"serviceAccount:{SA['load']}", "roles/bigquery.jobUser"),
        (f"serviceAccount:{SA['trigger']}", "roles/eventarc.eventReceiver"),
        (GCS_AGENT, "roles/pubsub.publisher"),
    ])
    # Each is documented with its reason, and the structured grants agree with the commands.
    assert {role for _, role, why in PROJECT_LEVEL_GRANTS if len(why) > 40} == {r for _, r in project_bindings}
    assert sorted((g.member, g.role) for g in plan.grants if g.scope == "project") == project_bindings
    # The submit and cron accounts get nothing on the project.
    assert not [b for b in project_bindings if SA["submit"] in b[0] or SA["cron"] in b[0]]


def test_bucket_grants_are_object_create_for_submit_and_object_read_for_load():
    plan = make_plan()
    bindings = [(a[4], flag(a, "member"), flag(a, "role"))
                for a in commands(plan, "gcloud", "storage", "buckets", "add-iam-policy-binding")]
    assert bindings == [
        (f"gs://{BUCKET}", f"serviceAccount:{SA['submit']}", "roles/storage.objectCreator"),
        (f"gs://{BUCKET}", f"serviceAccount:{SA['load']}", "roles/storage.objectViewer"),
    ]


def test_load_gets_data_editor_on_its_datasets_only():
    plan = make_plan()
    grants = [a[-1] for a in commands(plan, "bq") if "query" in a]
    assert grants == [
        f'GRANT `roles/bigquery.dataEditor` ON SCHEMA `{PROJECT}.{ds}` TO "serviceAccount:{SA["load"]}"'
        for ds in ("org_example_other", "org_example_toolbox", "_gleanpipe")
    ]
    for argv in commands(plan, "bq"):
        assert "--location=europe-west1" in argv and f"--project_id={PROJECT}" in argv
    assert all("--force" in a for a in commands(plan, "bq") if "mk" in a)  # keeps an existing dataset


def test_functions_run_as_their_own_accounts_with_their_settings():
    plan = make_plan(GLEANPIPE_DEPLOY_SUBMIT_MEMORY="512Mi", GLEANPIPE_DEPLOY_LOAD_MAX_INSTANCES="3")
    submit, load = deploy_of(plan, "gleanpipe-submit"), deploy_of(plan, "gleanpipe-load")
    for argv in (submit, load):
        assert "--gen2" in argv
        assert flag(argv, "region") == "europe-west1"
        assert flag(argv, "runtime") == "python312"
        assert flag(argv, "source") == "build/deploy/function"
    assert flag(submit, "service-account") == SA["submit"]
    assert flag(load, "service-account") == SA["load"]
    assert flag(submit, "entry-point") == "submit" and "--trigger-http" in submit
    assert flag(load, "entry-point") == "load"
    assert env_of(submit) == {"GLEANPIPE_STORE_URL": f"gs://{BUCKET}/gleanpipe", "GLEANPIPE_DATA_DIR": "/tmp/gleanpipe",
                              "GLEANPIPE_DEBUG_INDEX": "off"}  # no viewer there; submit may only create objects
    assert env_of(load) == {"GLEANPIPE_STORE_URL": f"gs://{BUCKET}/gleanpipe", "GLEANPIPE_DATA_DIR": "/tmp/gleanpipe",
                            "GLEANPIPE_WAREHOUSE_URL": f"bigquery://{PROJECT}/europe-west1"}
    assert flag(submit, "memory") == "512Mi" and flag(submit, "max-instances") == "10"
    assert flag(load, "memory") == "512Mi" and flag(load, "max-instances") == "3"
    assert flag(submit, "timeout") == "60s" and flag(load, "timeout") == "120s"  # GLEANPIPE_DEPLOY_LOAD_TIMEOUT
    assert flag(deploy_of(make_plan(GLEANPIPE_DEPLOY_LOAD_TIMEOUT="540"), "gleanpipe-load"), "timeout") == "540s"
    # Reachable from outside Google: the Glean SDK posts to submit's URL (public by the invoker grant,
    # but internal-only ingress would refuse it before that), and Cloud Scheduler calls deletions.
    for name in ("gleanpipe-submit", "gleanpipe-load", "gleanpipe-deletions"):
        assert flag(deploy_of(plan, name), "ingress-settings") == "all", name
    assert not [a for a in submit + load if a.startswith("--build-service-account")]


def test_load_is_triggered_by_the_raw_bucket_with_retries_as_the_trigger_account():
    plan = make_plan()
    load, submit = deploy_of(plan, "gleanpipe-load"), deploy_of(plan, "gleanpipe-submit")
    assert "--retry" in load and "--retry" not in submit
    assert [a for a in load if a.startswith("--trigger-event-filters=")] == [
        "--trigger-event-filters=type=google.cloud.storage.object.v1.finalized",
        f"--trigger-event-filters=bucket={BUCKET}"]
    assert flag(load, "trigger-location") == "europe-west1"
    assert flag(load, "trigger-service-account") == SA["trigger"]
    invokers = [(a[3], flag(a, "member")) for a in commands(plan, "gcloud", "functions", "add-invoker-policy-binding")]
    assert [m for name, m in invokers if name == "gleanpipe-load"] == [f"serviceAccount:{SA['trigger']}"]
    # Grants the trigger depends on come before the deploy that creates it.
    titles = [s.title for s in plan.steps]
    load_at = titles.index("Deploy gleanpipe-load (storage trigger on gs://gp-test-123-gleanpipe-raw, retried)")
    for needed in ("gcs-agent: roles/pubsub.publisher", "trigger: roles/eventarc.eventReceiver"):
        assert [i for i, t in enumerate(titles) if t.startswith(needed)][0] < load_at


def test_gcs_service_agent_is_read_before_it_is_used():
    plan = make_plan()
    captured_at = [i for i, s in enumerate(plan.steps) if s.capture == "GCS_SERVICE_AGENT"]
    used_at = [i for i, s in enumerate(plan.steps) if any("${GCS_SERVICE_AGENT}" in a for a in s.argv)]
    assert captured_at == [1] and used_at and min(used_at) > 1
    assert plan.steps[1].argv == ("gcloud", "storage", "service-agent", f"--project={PROJECT}")


def test_every_creating_step_is_safe_to_run_again():
    plan = make_plan()
    for step in plan.steps:
        if "create" in step.argv:
            assert step.skip_if and "describe" in step.skip_if, step.title
        if step.argv[0] == "bq" and "mk" in step.argv:
            assert "--force" in step.argv
    # `service-accounts describe` takes the email (or the numeric unique id), not the id it was
    # created with: describing by the id always fails, and a second deploy would create again.
    assert [s.skip_if for s in plan.steps if s.argv[:4] == ("gcloud", "iam", "service-accounts", "create")] == [
        ("gcloud", "iam", "service-accounts", "describe", SA[role], f"--project={PROJECT}", "--format=value(email)")
        for role in ("submit", "load", "trigger", "cron")]


def test_build_service_account_setting():
    plan = make_plan(GLEANPIPE_DEPLOY_BUILD_SERVICE_ACCOUNT=f"builder@{PROJECT}.iam.gserviceaccount.com")
    for name in ("gleanpipe-submit", "gleanpipe-load", "gleanpipe-deletions"):
        assert flag(deploy_of(plan, name), "build-service-account") == (
            f"projects/{PROJECT}/serviceAccounts/builder@{PROJECT}.iam.gserviceaccount.com")


def test_undeploy_keeps_data_and_removes_only_what_deploy_made():
    plan = undeploy_plan(load_settings(ENV))
    argvs = [list(s.argv) for s in plan.steps]
    assert argvs[0] == ["gcloud", "scheduler", "jobs", "delete", "gleanpipe-deletions", "--location=europe-west1",
                        f"--project={PROJECT}", "--quiet"]  # first: nothing calls deletions while it goes
    assert plan.steps[0].only_if[:5] == ("gcloud", "scheduler", "jobs", "describe", "gleanpipe-deletions")
    assert [a[:4] for a in argvs if a[1] == "functions"] == [["gcloud", "functions", "delete", "gleanpipe-deletions"],
                                                            ["gcloud", "functions", "delete", "gleanpipe-load"],
                                                            ["gcloud", "functions", "delete", "gleanpipe-submit"]]
    assert [a[4] for a in argvs if a[1:4] == ["iam", "service-accounts", "delete"]] == list(SA.values())
    removed = sorted(flag(a, "role") for a in argvs if "remove-iam-policy-binding" in a)
    assert removed == ["roles/bigquery.jobUser", "roles/eventarc.eventReceiver"]
    assert not [a for a in argvs if a[0] == "bq" or "buckets" in a or "rm" in a]
    assert f"gs://{BUCKET}" in plan.notes[0] and "_gleanpipe" in plan.notes[0]


def test_steps_that_change_iam_are_tried_three_times_and_project_bindings_are_unconditional():
    """README: "Steps that change IAM are tried up to 3 times, 20 s apart". And a project binding
    names --condition=None: without it, gcloud refuses (in --quiet mode) to add a binding to a
    project whose policy has conditional bindings. Neither was asserted (mutation audit)."""
    plan = make_plan()
    iam = [s for s in plan.steps if {"add-iam-policy-binding", "add-invoker-policy-binding"} & set(s.argv)
           or (s.argv[0] == "bq" and s.argv[-1].startswith("GRANT "))]
    assert len(iam) == 2 + 3 + 3 + 2  # bucket, dataset GRANTs, project, function invokers
    assert [s.title for s in iam if s.attempts != 3] == []
    assert [s.grant for s in iam if s.grant is None] == []  # each is in the plan's list of grants
    for argv in commands(plan, "gcloud", "projects", "add-iam-policy-binding"):
        assert flag(argv, "condition") == "None" and "--quiet" in argv
    undeploy = undeploy_plan(load_settings(ENV))
    removals = [s for s in undeploy.steps if "remove-iam-policy-binding" in s.argv]
    assert [flag(s.argv, "role") for s in removals] == ["roles/bigquery.jobUser", "roles/eventarc.eventReceiver"]
    for step in removals:
        assert flag(step.argv, "condition") == "None"
        # gcloud fails when the binding is not there: undeploy goes on (test_deploy_run.py runs it so)
        assert step.tolerate.startswith("the binding is already gone")


def test_a_bigquery_location_apart_from_the_region_moves_the_datasets_only():
    """GLEANPIPE_DEPLOY_BQ_LOCATION is the datasets' location; the bucket, the functions and the
    trigger stay in the region (Eventarc wants the trigger in the bucket's location). The tests
    used the default, where both are the same, so either could stand for the other."""
    plan = make_plan(GLEANPIPE_DEPLOY_BQ_LOCATION="EU")
    (create,) = commands(plan, "gcloud", "storage", "buckets", "create")
    assert flag(create, "location") == "europe-west1"
    load = deploy_of(plan, "gleanpipe-load")
    assert flag(load, "trigger-location") == "europe-west1"
    for name in ("gleanpipe-submit", "gleanpipe-load", "gleanpipe-deletions"):
        assert flag(deploy_of(plan, name), "region") == "europe-west1"
    bq = commands(plan, "bq")
    assert len(bq) == 6 and all(flag(argv, "location") == "EU" for argv in bq)
    assert env_of(load)["GLEANPIPE_WAREHOUSE_URL"] == f"bigquery://{PROJECT}/EU"
    assert env_of(deploy_of(plan, "gleanpipe-deletions"))["GLEANPIPE_WAREHOUSE_URL"] == f"bigquery://{PROJECT}/EU"


# --- deletions: the function and its schedule ------------------------------------------------

def test_deletions_is_a_private_http_function_running_as_load():
    plan = make_plan(GLEANPIPE_DEPLOY_LOAD_MEMORY="1Gi")
    argv = deploy_of(plan, "gleanpipe-deletions")
    assert flag(argv, "entry-point") == "deletions" and "--trigger-http" in argv
    assert "--no-allow-unauthenticated" in argv and "--allow-unauthenticated" not in argv
    assert "--retry" not in argv  # HTTP: the scheduler retries, not Eventarc
    assert flag(argv, "service-account") == SA["load"]  # the same BigQuery rights as load, nothing new
    assert env_of(argv) == {"GLEANPIPE_DATA_DIR": "/tmp/gleanpipe",
                            "GLEANPIPE_WAREHOUSE_URL": f"bigquery://{PROJECT}/europe-west1"}  # no store
    assert (flag(argv, "memory"), flag(argv, "max-instances"), flag(argv, "timeout")) == ("1Gi", "1", "1800s")
    assert "--gen2" in argv and flag(argv, "region") == "europe-west1" and flag(argv, "runtime") == "python312"


def test_only_the_cron_account_may_invoke_deletions_and_it_may_invoke_nothing_else():
    plan = make_plan()
    invokers = sorted((a[3], flag(a, "member"))
                      for a in commands(plan, "gcloud", "functions", "add-invoker-policy-binding"))
    assert invokers == [("gleanpipe-deletions", f"serviceAccount:{SA['cron']}"),
                        ("gleanpipe-load", f"serviceAccount:{SA['trigger']}")]
    # The cron account's only grant anywhere: invoker on the deletions function.
    assert [(g.scope, g.resource, g.role) for g in plan.grants if g.member == f"serviceAccount:{SA['cron']}"] == [
        ("function", "gleanpipe-deletions", "roles/run.invoker")]
    everything = [a for s in plan.steps for a in s.argv]
    # Where the cron account appears at all: its invoker grant, and the job's identity (create, update).
    assert [a for a in everything if SA["cron"] in a] == [f"--member=serviceAccount:{SA['cron']}"] + [
        f"--oidc-service-account-email={SA['cron']}"] * 2
    # deletions adds no grant for the load account: the plan grants load exactly what it did before.
    load = sorted((g.scope, g.resource, g.role) for g in plan.grants if g.member == f"serviceAccount:{SA['load']}")
    assert load == sorted([("bucket", BUCKET, "roles/storage.objectViewer"),
                           ("project", PROJECT, "roles/bigquery.jobUser")]
                          + [("dataset", ds, "roles/bigquery.dataEditor")
                             for ds in ("org_example_other", "org_example_toolbox", "_gleanpipe")])


def test_the_scheduler_job_calls_the_deletions_url_with_an_oidc_token_of_the_cron_account():
    plan = make_plan()
    (create,) = commands(plan, "gcloud", "scheduler", "jobs", "create", "http")
    (update,) = commands(plan, "gcloud", "scheduler", "jobs", "update", "http")
    assert create[6:] == update[6:]  # the update re-applies exactly what the create sets
    for argv in (create, update):
        assert argv[5] == "gleanpipe-deletions"
        assert flag(argv, "location") == "europe-west1" and flag(argv, "project") == PROJECT
        assert flag(argv, "schedule") == "*/30 * * * *" and flag(argv, "time-zone") == "Etc/UTC"
        assert flag(argv, "uri") == "${DELETIONS_URL}" and flag(argv, "oidc-token-audience") == "${DELETIONS_URL}"
        assert flag(argv, "http-method") == "POST"
        assert flag(argv, "oidc-service-account-email") == SA["cron"]
        assert not [a for a in argv if a.startswith("--oauth")]  # OIDC (Cloud Run), not an OAuth access token
        assert flag(argv, "attempt-deadline") == "1800s" and flag(argv, "max-retry-attempts") == "3"
        # README: "a failed run is retried 3 times, 60 s to 10 min apart"
        assert flag(argv, "min-backoff") == "60s" and flag(argv, "max-backoff") == "600s"
    # The URL is read from the deployed function before the job uses it.
    titles = [s.title for s in plan.steps]
    (read_at,) = [i for i, s in enumerate(plan.steps) if s.capture == "DELETIONS_URL"]
    assert plan.steps[read_at].argv == ("gcloud", "functions", "describe", "gleanpipe-deletions",
                                        "--region=europe-west1", f"--project={PROJECT}",
                                        "--format=value(serviceConfig.uri)")
    used_at = [i for i, s in enumerate(plan.steps) if any("${DELETIONS_URL}" in a for a in s.argv)]
    assert used_at and min(used_at) > read_at
    assert titles.index("Deploy gleanpipe-deletions (private HTTP, retries pending deletion requests)") < read_at
    assert titles.index("cron: roles/run.invoker on gleanpipe-deletions") < min(used_at)
    (step,) = [s for s in plan.steps if s.argv[:5] == ("gcloud", "scheduler", "jobs", "create", "http")]
    assert step.skip_if == ("gcloud", "scheduler", "jobs", "describe", "gleanpipe-deletions",
                            "--location=europe-west1", f"--project={PROJECT}", "--format=value(name)")
    assert any("gcloud scheduler jobs run gleanpipe-deletions --location=europe-west1" in n for n in plan.notes)
    # after an app is added, replay that app's objects only: on BigQuery a replay streams all it reads again
    assert any("--prefix raw/<app-id>/` (raw objects are kept for" in n and "replay that app only" in n
               for n in plan.notes)


def test_deletions_schedule_setting():
    plan = make_plan(GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE="  5   */2 * * MON-FRI ")
    for argv in commands(plan, "gcloud", "scheduler", "jobs"):
        assert flag(argv, "schedule") == "5 */2 * * MON-FRI"
    assert load_settings(ENV).deletions_schedule == "*/30 * * * *"


def test_deletions_schedule_from_the_example_settings_file(tmp_path):
    example = (ROOT / "infra" / "deploy.env.example").read_text()
    assert "# GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE=*/30 * * * *\n" in example
    path = tmp_path / "deploy.env"
    path.write_text(example.replace("# GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE=*/30 * * * *",
                                    "GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE='0 */6 * * *'"))
    assert load_settings({}, settings_file=str(path)).deletions_schedule == "0 */6 * * *"


@pytest.mark.parametrize("schedule", ["0 0 1 JAN *", "0 0 1 dec *", "0 0 * JAN-MAR,OCT-DEC *", "0 9-9 * * *",
                                      "0 0 * * SUN-SAT", "59 23 31 12 7"])
def test_month_and_day_names_and_the_edges_of_each_field_are_accepted(schedule):
    """Month names are 1-12 (JAN is 1), a range may be one value, and each field's last value is
    in range. Before this test, only SUN-SAT names were used, so JAN counted as month 0 unnoticed."""
    assert load_settings({**ENV, "GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE": schedule}).deletions_schedule == schedule


@pytest.mark.parametrize("schedule, why", [
    ("every 30 minutes", "5 fields expected (minute hour day-of-month month day-of-week), got 3"),
    ("@hourly", "5 fields expected (minute hour day-of-month month day-of-week), got 1"),
    ("*/30 * * *", "5 fields expected (minute hour day-of-month month day-of-week), got 4"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("*/0 * * * *", "minute: step 0 must be between 1 and 59"),
    ("0 20-4 * * *", "hour: range '20-4' runs backwards"),
    ("0 0 0 * *", "day of month: 0 is outside 1-31"),
    ("0 0 * FOO *", "month: 'FOO' is not a number or one of JAN, FEB, MAR, APR, MAY, JUN, JUL, AUG, SEP, OCT, "
                    "NOV, DEC"),
    ("0 0 * * 1;rm", "day of week: '1;rm' is not *, */N, A, A-B or A-B/N"),
])
def test_a_bad_deletions_schedule_is_a_clear_error(schedule, why):
    with pytest.raises(DeploySettingsError) as exc:
        load_settings({**ENV, "GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE": schedule})
    (problem,) = exc.value.problems
    assert problem == (f"GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE: {' '.join(schedule.split())!r} is not a unix-cron "
                       f"schedule ({why}); for example '*/30 * * * *' (every 30 minutes) or '15 * * * *' (hourly)")


# --- settings ----------------------------------------------------------------------------------

def test_defaults():
    s = load_settings({"GLEANPIPE_DEPLOY_PROJECT": PROJECT})
    assert (s.region, s.bucket, s.store_prefix, s.apps, s.bq_location) == (
        "us-central1", BUCKET, "gleanpipe", (), "us-central1")
    assert (s.raw_days, s.raw_action, s.submit_memory, s.load_memory) == (90, "delete", "256Mi", "512Mi")
    assert s.datasets == ("_gleanpipe",)
    assert s.store_url == f"gs://{BUCKET}/gleanpipe" and s.warehouse_url == f"bigquery://{PROJECT}/us-central1"
    assert load_settings({**ENV, "GLEANPIPE_DEPLOY_BQ_LOCATION": "eu"}).bq_location == "EU"


def test_missing_project_is_a_clear_error():
    with pytest.raises(DeploySettingsError) as exc:
        load_settings({})
    assert exc.value.problems == ["GLEANPIPE_DEPLOY_PROJECT: missing; set it to your Google Cloud project id"]


@pytest.mark.parametrize("bucket", ["UPPER-case", "ab", "my.dotted.bucket", "goog-raw", "x-google-raw",
                                    "has space", "-starts-with-dash", "ends-with-dash-", "a" * 64])
def test_bad_bucket_names(bucket):
    with pytest.raises(DeploySettingsError) as exc:
        load_settings({**ENV, "GLEANPIPE_DEPLOY_BUCKET": bucket})
    (problem,) = exc.value.problems
    assert problem.startswith(f"GLEANPIPE_DEPLOY_BUCKET: {bucket!r} is not a usable bucket name")


@pytest.mark.parametrize("project, ok", [("abcdef", True), ("a" + "b" * 28 + "c", True), ("abcde", False),
                                         ("a" + "b" * 29 + "c", False), ("1abcdef", False), ("abcdef-", False)])
def test_project_ids_are_6_to_30_characters(project, ok):
    env = {**ENV, "GLEANPIPE_DEPLOY_PROJECT": project, "GLEANPIPE_DEPLOY_BUCKET": "raw-bucket"}
    if ok:
        assert load_settings(env).project == project
        return
    with pytest.raises(DeploySettingsError) as exc:
        load_settings(env)
    (problem,) = exc.value.problems
    assert problem.startswith(f"GLEANPIPE_DEPLOY_PROJECT: {project!r} is not a project id (6-30 characters")


def test_a_name_prefix_of_22_characters_is_the_longest_so_service_account_ids_stay_within_30():
    longest = "g" + "p" * 21
    s = load_settings({**ENV, "GLEANPIPE_DEPLOY_NAME_PREFIX": longest})
    assert max(len(s.service_account_id(role)) for role in ("submit", "load", "trigger", "cron")) == 30
    assert load_settings({**ENV, "GLEANPIPE_DEPLOY_NAME_PREFIX": "gp"}).function_name("load") == "gp-load"
    for bad in (longest + "p", "g", "1gleanpipe", "gleanpipe-"):
        with pytest.raises(DeploySettingsError) as exc:
            load_settings({**ENV, "GLEANPIPE_DEPLOY_NAME_PREFIX": bad})
        (problem,) = exc.value.problems
        assert problem.startswith(f"GLEANPIPE_DEPLOY_NAME_PREFIX: {bad!r} must be 2-22 characters"), problem


@pytest.mark.parametrize("region", ["europe-west10", "me-central2", "northamerica-northeast1", "us-east5"])
def test_regions_with_one_or_two_digits_are_accepted(region):
    s = load_settings({**ENV, "GLEANPIPE_DEPLOY_REGION": region})
    assert (s.region, s.bq_location) == (region, region)


@pytest.mark.parametrize("region", ["us-central", "US", "europe_west1", "europe-west1 ", "eu-west-1a", "mars"])
def test_bad_regions(region):
    with pytest.raises(DeploySettingsError) as exc:
        load_settings({**ENV, "GLEANPIPE_DEPLOY_REGION": region + "x" if region.endswith(" ") else region})
    assert exc.value.problems[0].startswith("GLEANPIPE_DEPLOY_REGION: ")
    assert "is not a region name like us-central1" in exc.value.problems[0]


def test_every_problem_is_reported_at_once():
    with pytest.raises(DeploySettingsError) as exc:
        load_settings({"GLEANPIPE_DEPLOY_PROJECT": "My Project", "GLEANPIPE_DEPLOY_REGION": "nowhere",
                       "GLEANPIPE_DEPLOY_RAW_DAYS": "ninety", "GLEANPIPE_DEPLOY_RAW_ACTION": "shred",
                       "GLEANPIPE_DEPLOY_SUBMIT_MEMORY": "64Mi", "GLEANPIPE_DEPLOY_LOAD_MAX_INSTANCES": "0",
                       "GLEANPIPE_DEPLOY_APPS": "ok.app,bad app", "GLEANPIPE_DEPLOY_PROJCT": "typo"})
    names = [p.split(":")[0] for p in exc.value.problems]
    assert sorted(names) == sorted([
        "GLEANPIPE_DEPLOY_PROJCT", "GLEANPIPE_DEPLOY_PROJECT", "GLEANPIPE_DEPLOY_REGION", "GLEANPIPE_DEPLOY_BUCKET",
        "GLEANPIPE_DEPLOY_APPS", "GLEANPIPE_DEPLOY_BQ_LOCATION", "GLEANPIPE_DEPLOY_RAW_ACTION",
        "GLEANPIPE_DEPLOY_RAW_DAYS", "GLEANPIPE_DEPLOY_SUBMIT_MEMORY", "GLEANPIPE_DEPLOY_LOAD_MAX_INSTANCES"])
    text = str(exc.value)
    assert "'My Project' is not a project id" in text
    assert "'bad app' is not an app id" in text
    assert "GLEANPIPE_DEPLOY_RAW_DAYS: must be a whole number, got 'ninety'" in text
    assert "GLEANPIPE_DEPLOY_PROJCT: not a deploy setting (typo?)" in text


def test_settings_file_then_environment(tmp_path):
    path = tmp_path / "deploy.env"
    path.write_text("# my project\nGLEANPIPE_DEPLOY_PROJECT=from-file-1\n"
                    "export GLEANPIPE_DEPLOY_REGION='asia-east1'\nGLEANPIPE_DEPLOY_RAW_DAYS=\"7\"\n\n")
    s = load_settings({"GLEANPIPE_DEPLOY_RAW_DAYS": "14"}, settings_file=str(path))
    assert (s.project, s.region, s.raw_days) == ("from-file-1", "asia-east1", 14)
    s = load_settings({"GLEANPIPE_DEPLOY_SETTINGS": str(path)})
    assert (s.project, s.raw_days) == ("from-file-1", 7)
    # every problem at once: a line that is not KEY=VALUE hides neither a typo nor a bad value
    path.write_text("GLEANPIPE_DEPLOY_PROJECT=from-file-1\nnot a setting line\nGLEANPIPE_DEPLOY_REGOIN=x\n"
                    "GLEANPIPE_DEPLOY_RAW_DAYS=ninety\n")
    with pytest.raises(DeploySettingsError) as exc:
        load_settings({}, settings_file=str(path))
    assert exc.value.problems[0] == f"{path}:2: expected KEY=VALUE, got 'not a setting line'"
    assert exc.value.problems[1].startswith(f"GLEANPIPE_DEPLOY_REGOIN (in {path}): not a deploy setting")
    assert "GLEANPIPE_DEPLOY_RAW_DAYS: must be a whole number, got 'ninety'" in exc.value.problems
    assert len(exc.value.problems) == 3
    # an empty environment variable counts as unset (as GLEANPIPE_* settings do at run time): the file's value stays
    path.write_text("GLEANPIPE_DEPLOY_PROJECT=from-file-1\nGLEANPIPE_DEPLOY_BUCKET=file-bucket\n")
    s = load_settings({"GLEANPIPE_DEPLOY_BUCKET": ""}, settings_file=str(path))
    assert s.bucket == "file-bucket"
    with pytest.raises(DeploySettingsError, match="cannot read"):
        load_settings({}, settings_file=str(tmp_path / "missing.env"))


DEPLOY_BOUNDS = {  # whole numbers: (least, most); sizes: the same in MiB
    "GLEANPIPE_DEPLOY_RAW_DAYS": (1, 36500), "GLEANPIPE_DEPLOY_SUBMIT_MAX_INSTANCES": (1, 1000),
    "GLEANPIPE_DEPLOY_LOAD_MAX_INSTANCES": (1, 1000), "GLEANPIPE_DEPLOY_LOAD_TIMEOUT": (1, 540),
    "GLEANPIPE_DEPLOY_SUBMIT_MEMORY": (128, 32768), "GLEANPIPE_DEPLOY_LOAD_MEMORY": (128, 32768),
}


def test_every_deploy_setting_is_in_the_readme_with_its_default():
    """The README's Deploy settings table holds every GLEANPIPE_DEPLOY_* setting and nothing else,
    each with its default in its default column and its bounds in its row (before: a row anywhere in
    the README would do, a default anywhere in the row, and no bound was given)."""
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Deploy settings\n", 1)[1].split("\n#", 1)[0]
    rows = {name: (default.strip(), meaning) for name, default, meaning in
            re.findall(r"^\| `(GLEANPIPE_[A-Z0-9_]+)` \| ([^|]*) \|(.*)$", table, re.M)}
    names = [n for n in SETTINGS if n.startswith("GLEANPIPE_DEPLOY_")]
    assert len(names) == 18 and sorted(rows) == sorted(names)
    for name in names:
        default = SETTINGS[name].default
        if default:
            assert rows[name][0] == f"`{default}`", name
    for name, (least, most) in DEPLOY_BOUNDS.items():
        said = (f"between {least}Mi and {most // 1024}Gi" if name.endswith("_MEMORY")
                else f"Between {least} and {most}.")
        assert said in rows[name][1], (name, rows[name][1])


@pytest.mark.parametrize("name, bounds", sorted(DEPLOY_BOUNDS.items()))
def test_each_bounded_deploy_setting_at_its_bounds_and_one_past(name, bounds):
    least, most = bounds
    if name.endswith("_MEMORY"):
        taken, refused = (f"{least}Mi", f"{most}Mi", f"{most // 1024}Gi"), (f"{least - 1}Mi", f"{most + 1}Mi", "33Gi")
        field = name.removeprefix("GLEANPIPE_DEPLOY_").lower()
        for value in taken:
            assert getattr(load_settings({**ENV, name: value}), field) == value
        for value in refused:
            with pytest.raises(DeploySettingsError) as exc:
                load_settings({**ENV, name: value})
            assert exc.value.problems == [
                f"{name}: must be a size like 256Mi or 1Gi between 128Mi and 32Gi, got {value!r}"]
        return
    field = name.removeprefix("GLEANPIPE_DEPLOY_").lower()
    for value in (least, most):
        assert getattr(load_settings({**ENV, name: str(value)}), field) == value
    for value in (least - 1, most + 1):
        with pytest.raises(DeploySettingsError) as exc:
            load_settings({**ENV, name: str(value)})
        assert exc.value.problems == [f"{name}: must be between {least} and {most}, got {value}"]
