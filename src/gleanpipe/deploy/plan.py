"""Settings -> the ordered gcloud/bq commands that deploy (or undeploy) gleanpipe. Pure: no I/O.

Every command is an argv list, never a shell string, so no value can be re-parsed by a shell.
Values that are only known in the cloud (the Cloud Storage service agent's email, the submit
URL) are read by a ``capture`` step and written as ``${NAME}`` in later argv items.

Least privilege, and why each grant is where it is:

=================================  ======================================  ==========================
who                                role                                    on
=================================  ======================================  ==========================
submit SA                          roles/storage.objectCreator             the raw bucket
load SA                            roles/storage.objectViewer              the raw bucket
load SA                            roles/bigquery.dataEditor               each app dataset, _gleanpipe
load SA                            roles/bigquery.jobUser                  project (GCP: jobs are project resources)
trigger SA                         roles/eventarc.eventReceiver            project (GCP: granted on the project only)
trigger SA                         roles/run.invoker                       the load function only
cron SA                            roles/run.invoker                       the deletions function only
Cloud Storage service agent        roles/pubsub.publisher                  project (GCP: Eventarc makes the topic at deploy)
allUsers                           roles/run.invoker (via deploy flag)     the submit function only
=================================  ======================================  ==========================

``PROJECT_LEVEL_GRANTS`` below is that list's project rows; the tests allow exactly those.

The third function, ``deletions``, retries pending deletion requests (BigQuery refuses to
delete rows still in its streaming buffer, and a request is final only after
GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S). It runs as the load SA, because it needs exactly load's
BigQuery rights (DML jobs on the app datasets and _gleanpipe) and nothing more, so no new grant
is needed for it. A Cloud Scheduler job calls it on GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE with an
OIDC token of its own account, ``cron``, which may invoke that function and nothing else. Not
the trigger SA: that one also holds eventarc.eventReceiver on the project and may invoke load,
so sharing it would let either caller reach the other function.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from ..config import SETTINGS
from ..debug_index import DEBUG_PREFIX
from ..naming import ERROR_PREFIX, RAW_PREFIX
from .settings import DeploySettings

FINALIZED = "google.cloud.storage.object.v1.finalized"
APIS = (
    "cloudfunctions.googleapis.com",  # the functions
    "run.googleapis.com",  # gen2 functions run as Cloud Run services
    "cloudbuild.googleapis.com",  # builds the function source into an image
    "artifactregistry.googleapis.com",  # stores that image
    "eventarc.googleapis.com",  # the storage trigger of load
    "pubsub.googleapis.com",  # Eventarc's transport for storage events
    "storage.googleapis.com",  # the raw bucket
    "bigquery.googleapis.com",  # the warehouse
    "iam.googleapis.com",  # the service accounts
    "logging.googleapis.com",  # function and build logs
    "cloudscheduler.googleapis.com",  # the job that runs deletions on a schedule
)
# Service accounts. Their ids are <prefix>-<role>: a role of at most 7 characters keeps them
# within 30 characters for the longest prefix (22).
ROLES = ("submit", "load", "trigger", "cron")
# deletions: a run may carry out many requests, each a DML job per table. Cloud Scheduler waits
# at most 30 minutes for an HTTP target; the function gets the same, and one instance (Cloud
# Scheduler never starts a run while the previous one is outstanding; a manual call then waits).
DELETIONS_TIMEOUT_S = 1800
DELETIONS_RETRIES = 3  # Cloud Scheduler's own retries of a failed run (503: BigQuery unavailable)
DELETIONS_MIN_BACKOFF_S = 60
DELETIONS_MAX_BACKOFF_S = 600

# (member kind, role, why) for every project-level grant the plan makes. Nothing else is granted
# on the project; tests/test_deploy_plan.py checks the plan against this list.
PROJECT_LEVEL_GRANTS = (
    ("load", "roles/bigquery.jobUser",
     "load runs query jobs (DML for deletion requests and their retries, lookups): bigquery.jobs.create "
     "exists only on projects. The role only lets it start jobs; which tables a job may read or change is "
     "still decided by its dataset roles. Streaming inserts and table changes need no job."),
    ("trigger", "roles/eventarc.eventReceiver",
     "Eventarc checks eventarc.events.receiveEvent on the project of the trigger; the role has no other "
     "permission."),
    ("gcs-agent", "roles/pubsub.publisher",
     "Cloud Storage's own service agent publishes the bucket's events to a topic that Eventarc creates "
     "when load is deployed; the topic's name is not known before, so GCP documents a project grant."),
)


@dataclass(frozen=True)
class Grant:
    scope: str  # "project", "bucket", "dataset" or "function"
    resource: str
    member: str
    role: str


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...]
    why: str = ""
    skip_if: tuple[str, ...] | None = None  # exit 0 means "already there": the step is skipped
    only_if: tuple[str, ...] | None = None  # exit non-zero means "nothing to do": the step is skipped
    capture: str | None = None  # stdout (stripped) becomes ${capture} in later argv items
    attempts: int = 1  # new service accounts and grants take a while to be seen everywhere
    tolerate: str = ""  # non-empty: a failure is reported with this reason and the plan goes on
    grant: Grant | None = None

    def render(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Plan:
    action: str
    settings: DeploySettings
    steps: list[Step]
    files: dict[str, str] = field(default_factory=dict)  # path -> content, written before running
    notes: list[str] = field(default_factory=list)

    @property
    def grants(self) -> list[Grant]:
        return [s.grant for s in self.steps if s.grant]

    def as_json(self) -> str:
        return json.dumps(
            {
                "action": self.action,
                "steps": [
                    {"title": s.title, "argv": list(s.argv), "why": s.why,
                     "skip_if": list(s.skip_if) if s.skip_if else None,
                     "only_if": list(s.only_if) if s.only_if else None,
                     "capture": s.capture, "attempts": s.attempts, "tolerate": s.tolerate}
                    for s in self.steps
                ],
                "files": self.files,
                "notes": self.notes,
            },
            indent=2,
        )


def lifecycle_rules(s: DeploySettings) -> dict:
    """The raw bucket's lifecycle. Pings (``raw/``) and rejected pings' records (``errors/``):
    act on them once they are raw_days old. The debug index (``debug/``, debug_index.py): delete
    an entry once the viewer would no longer list it, so the index of tags nobody sends to any
    more does not grow for ever, and is never moved to the Archive class."""
    root = f"{s.store_prefix}/"
    condition: dict = {"age": s.raw_days, "matchesPrefix": [root + RAW_PREFIX, root + ERROR_PREFIX]}
    if s.raw_action == "delete":
        action = {"type": "Delete"}
    else:
        action = {"type": "SetStorageClass", "storageClass": "ARCHIVE"}
        condition["matchesStorageClass"] = ["STANDARD"]
    debug_days = -(-int(SETTINGS["GLEANPIPE_DEBUG_RETENTION_HOURS"].default) // 24)  # whole days, rounded up
    return {"rule": [{"action": action, "condition": condition},
                     {"action": {"type": "Delete"}, "condition": {"age": debug_days, "matchesPrefix": [root + DEBUG_PREFIX]}}]}


def function_env(s: DeploySettings, role: str) -> dict[str, str]:
    """Environment of each function: the store everywhere, the warehouse only where it is used."""
    if role == "deletions":  # the warehouse only: it never reads the store
        return {"GLEANPIPE_DATA_DIR": "/tmp/gleanpipe", "GLEANPIPE_WAREHOUSE_URL": s.warehouse_url}
    env = {"GLEANPIPE_STORE_URL": s.store_url, "GLEANPIPE_DATA_DIR": "/tmp/gleanpipe"}
    if role == "load":
        env["GLEANPIPE_WAREHOUSE_URL"] = s.warehouse_url
    if role == "submit":  # no /debug viewer on Google Cloud, and submit may only create objects
        env["GLEANPIPE_DEBUG_INDEX"] = "off"
    return env


def _env_flag(env: dict[str, str]) -> str:
    for key, value in env.items():
        if "," in value or "=" in key:  # settings validation makes this impossible; keep the flag unambiguous
            raise ValueError(f"environment value for {key} cannot be passed in --set-env-vars: {value!r}")
    return "--set-env-vars=" + ",".join(f"{k}={v}" for k, v in env.items())


def deploy_plan(s: DeploySettings, source_dir: str, lifecycle_path: str) -> Plan:
    p = f"--project={s.project}"
    gcs_agent = "serviceAccount:${GCS_SERVICE_AGENT}"
    sa = {role: s.service_account(role) for role in ROLES}
    member = {role: f"serviceAccount:{sa[role]}" for role in ROLES}
    member["gcs-agent"] = gcs_agent
    bucket_url = f"gs://{s.bucket}"
    steps: list[Step] = []

    steps.append(Step(
        "Enable the APIs gleanpipe uses",
        ("gcloud", "services", "enable", *APIS, p, "--quiet"),
        why="Enabling an API that is already on changes nothing.",
    ))
    steps.append(Step(
        "Look up the project's Cloud Storage service agent",
        ("gcloud", "storage", "service-agent", p),
        why="Its email holds the project number; it publishes the bucket's events for Eventarc.",
        capture="GCS_SERVICE_AGENT",
    ))

    descriptions = {
        "submit": "gleanpipe submit: writes raw pings to the bucket (create only)",
        "load": "gleanpipe load: reads raw pings, writes BigQuery rows",
        "trigger": "gleanpipe trigger: Eventarc identity that invokes load",
        "cron": "gleanpipe cron: Cloud Scheduler identity that invokes deletions",
    }
    for role in ROLES:
        steps.append(Step(
            f"Service account for {role}",
            ("gcloud", "iam", "service-accounts", "create", s.service_account_id(role), p,
             f"--display-name={descriptions[role]}", "--quiet"),
            why="One identity per job, so each gets only the roles that job needs.",
            skip_if=("gcloud", "iam", "service-accounts", "describe", sa[role], p, "--format=value(email)"),
        ))

    bucket_flags = ("--uniform-bucket-level-access", "--public-access-prevention", f"--lifecycle-file={lifecycle_path}")
    steps.append(Step(
        f"Raw bucket {bucket_url}",
        ("gcloud", "storage", "buckets", "create", bucket_url, p, f"--location={s.region}",
         "--default-storage-class=STANDARD", *bucket_flags),
        why="Same region as the functions and the trigger (Eventarc requires the trigger in the bucket's location).",
        skip_if=("gcloud", "storage", "buckets", "describe", bucket_url, p, "--format=value(name)"),
    ))
    steps.append(Step(
        f"Enforce access settings and lifecycle on {bucket_url}",
        ("gcloud", "storage", "buckets", "update", bucket_url, p, *bucket_flags),
        why="Also run when the bucket already existed: uniform access (no object ACLs), public access "
            "prevention enforced, and the lifecycle rule.",
    ))

    def bucket_grant(role: str, iam_role: str, why: str) -> Step:
        return Step(
            f"{role}: {iam_role} on {bucket_url}",
            ("gcloud", "storage", "buckets", "add-iam-policy-binding", bucket_url, p,
             f"--member={member[role]}", f"--role={iam_role}"),
            why=why, attempts=3, grant=Grant("bucket", s.bucket, member[role], iam_role),
        )

    steps.append(bucket_grant(
        "submit", "roles/storage.objectCreator",
        "storage.objects.create only: submit writes create-only (if_generation_match=0), so it never reads, "
        "lists, overwrites or deletes.",
    ))
    steps.append(bucket_grant(
        "load", "roles/storage.objectViewer",
        "storage.objects.get/list: load reads the object named by the event (and replay lists them).",
    ))

    for dataset in s.datasets:
        steps.append(Step(
            f"BigQuery dataset {dataset}",
            ("bq", f"--project_id={s.project}", f"--location={s.bq_location}", "mk", "--force", "--dataset",
             f"--description=gleanpipe: {'load errors and deletions' if dataset.startswith('_') else 'Glean pings'}",
             f"{s.project}:{dataset}"),
            why="Made here so load needs no dataset-creation right; --force: an existing dataset is kept as is.",
        ))
        steps.append(Step(
            f"load: roles/bigquery.dataEditor on dataset {dataset}",
            ("bq", f"--project_id={s.project}", f"--location={s.bq_location}", "query", "--nouse_legacy_sql",
             f'GRANT `roles/bigquery.dataEditor` ON SCHEMA `{s.project}.{dataset}` TO "{member["load"]}"'),
            why="Create and widen tables, streaming inserts, DML on rows, in this dataset only. "
                "GRANT (BigQuery DCL) adds the binding; running it again changes nothing.",
            attempts=3, grant=Grant("dataset", dataset, member["load"], "roles/bigquery.dataEditor"),
        ))

    for who, iam_role, why in PROJECT_LEVEL_GRANTS:
        steps.append(Step(
            f"{who}: {iam_role} on project {s.project}",
            ("gcloud", "projects", "add-iam-policy-binding", s.project, f"--member={member[who]}",
             f"--role={iam_role}", "--condition=None", "--quiet"),
            why=why, attempts=3, grant=Grant("project", s.project, member[who], iam_role),
        ))

    common = ("--gen2", f"--region={s.region}", p, f"--runtime={s.runtime}", f"--source={source_dir}",
              "--ingress-settings=all", "--quiet")
    if s.build_service_account:
        common += (f"--build-service-account=projects/{s.project}/serviceAccounts/{s.build_service_account}",)
    steps.append(Step(
        f"Deploy {s.function_name('submit')} (public HTTP)",
        ("gcloud", "functions", "deploy", s.function_name("submit"), *common, "--entry-point=submit",
         "--trigger-http", "--allow-unauthenticated", f"--service-account={sa['submit']}",
         f"--memory={s.submit_memory}", f"--max-instances={s.submit_max_instances}", "--timeout=60s",
         _env_flag(function_env(s, "submit"))),
        why="--allow-unauthenticated grants roles/run.invoker to allUsers on this function's service only: "
            "the Glean SDK sends pings without credentials.",
        attempts=2, grant=Grant("function", s.function_name("submit"), "allUsers", "roles/run.invoker"),
    ))
    steps.append(Step(
        f"Deploy {s.function_name('load')} (storage trigger on {bucket_url}, retried)",
        ("gcloud", "functions", "deploy", s.function_name("load"), *common, "--entry-point=load",
         f"--trigger-event-filters=type={FINALIZED}", f"--trigger-event-filters=bucket={s.bucket}",
         f"--trigger-location={s.region}", f"--trigger-service-account={sa['trigger']}", "--retry",
         "--no-allow-unauthenticated", f"--service-account={sa['load']}", f"--memory={s.load_memory}",
         f"--max-instances={s.load_max_instances}", f"--timeout={s.load_timeout}s",
         _env_flag(function_env(s, "load"))),
        why="--retry: a load that raises (BigQuery unavailable) is delivered again. The trigger acts as the "
            "trigger service account, not as load's.",
        attempts=2,
    ))
    steps.append(Step(
        f"trigger: roles/run.invoker on {s.function_name('load')}",
        ("gcloud", "functions", "add-invoker-policy-binding", s.function_name("load"), f"--region={s.region}", p,
         f"--member={member['trigger']}"),
        why="Eventarc delivers with the trigger account's identity; only it may call load.",
        attempts=3, grant=Grant("function", s.function_name("load"), member["trigger"], "roles/run.invoker"),
    ))
    deletions = s.function_name("deletions")
    steps.append(Step(
        f"Deploy {deletions} (private HTTP, retries pending deletion requests)",
        ("gcloud", "functions", "deploy", deletions, *common, "--entry-point=deletions", "--trigger-http",
         "--no-allow-unauthenticated", f"--service-account={sa['load']}", f"--memory={s.load_memory}",
         "--max-instances=1", f"--timeout={DELETIONS_TIMEOUT_S}s", _env_flag(function_env(s, "deletions"))),
        why="Runs what `gleanpipe deletions` runs. As the load account: it needs load's BigQuery rights and "
            "no others, so nothing new is granted. Not public: only the cron account may call it (next step).",
        attempts=2,
    ))
    steps.append(Step(
        f"cron: roles/run.invoker on {deletions}",
        ("gcloud", "functions", "add-invoker-policy-binding", deletions, f"--region={s.region}", p,
         f"--member={member['cron']}"),
        why="Cloud Scheduler calls deletions with an OIDC token of the cron account; only it may call it.",
        attempts=3, grant=Grant("function", deletions, member["cron"], "roles/run.invoker"),
    ))
    steps.append(Step(
        "Read the deletions URL",
        ("gcloud", "functions", "describe", deletions, f"--region={s.region}", p,
         "--format=value(serviceConfig.uri)"),
        why="The job calls this URL, and it is the audience of the job's OIDC token.",
        capture="DELETIONS_URL",
    ))
    job = scheduler_job_flags(s)
    steps.append(Step(
        f"Cloud Scheduler job {deletions} ({s.deletions_schedule}, UTC)",
        ("gcloud", "scheduler", "jobs", "create", "http", deletions, f"--location={s.region}", p, *job),
        why="Until a pending request succeeds, BigQuery keeps the client's rows; without a schedule no deletion "
            "is final on BigQuery.",
        skip_if=("gcloud", "scheduler", "jobs", "describe", deletions, f"--location={s.region}", p,
                 "--format=value(name)"),
        attempts=3,
    ))
    steps.append(Step(
        f"Enforce the schedule, URL and identity of job {deletions}",
        ("gcloud", "scheduler", "jobs", "update", "http", deletions, f"--location={s.region}", p, *job),
        why="Also run when the job already existed: a changed schedule or a redeployed function is applied.",
        attempts=3,
    ))
    steps.append(Step(
        "Read the submit URL",
        ("gcloud", "functions", "describe", s.function_name("submit"), f"--region={s.region}", p,
         "--format=value(serviceConfig.uri)"),
        capture="SUBMIT_URL",
    ))

    notes = [
        "Point the Glean SDK's server endpoint at ${SUBMIT_URL}.",
        f"Pending deletion requests are retried on '{s.deletions_schedule}' (UTC) by {deletions}; to run it now: "
        f"gcloud scheduler jobs run {deletions} --location={s.region} {p}",
        f"Datasets for apps not in GLEANPIPE_DEPLOY_APPS are not created and load cannot write them: add the app "
        f"and run `make deploy` again, then `gleanpipe replay --store-url {s.store_url} "
        f"--warehouse-url {s.warehouse_url} --prefix raw/<app-id>/` (raw objects are kept for {s.raw_days} days; "
        "on BigQuery a replay streams every object it reads again, so replay that app only).",
    ]
    if not s.apps:
        notes.insert(0, "GLEANPIPE_DEPLOY_APPS is empty: only the _gleanpipe dataset is created.")
    return Plan("deploy", s, steps, {lifecycle_path: json.dumps(lifecycle_rules(s), indent=2) + "\n"}, notes)


def scheduler_job_flags(s: DeploySettings) -> tuple[str, ...]:
    """The job's flags, the same for create and update: schedule, target, OIDC identity, retries."""
    return (
        f"--schedule={s.deletions_schedule}", "--time-zone=Etc/UTC", "--uri=${DELETIONS_URL}", "--http-method=POST",
        f"--oidc-service-account-email={s.service_account('cron')}", "--oidc-token-audience=${DELETIONS_URL}",
        f"--attempt-deadline={DELETIONS_TIMEOUT_S}s", f"--max-retry-attempts={DELETIONS_RETRIES}",
        f"--min-backoff={DELETIONS_MIN_BACKOFF_S}s", f"--max-backoff={DELETIONS_MAX_BACKOFF_S}s",
        "--description=gleanpipe: retry pending deletion requests (BigQuery streaming buffer)",
    )


def undeploy_plan(s: DeploySettings) -> Plan:
    """Remove the job, the functions, the grants and the service accounts; keep the data (bucket, datasets)."""
    p = f"--project={s.project}"
    steps: list[Step] = []
    job = s.function_name("deletions")
    steps.append(Step(
        f"Delete Cloud Scheduler job {job}",
        ("gcloud", "scheduler", "jobs", "delete", job, f"--location={s.region}", p, "--quiet"),
        why="First, so nothing calls deletions while it is removed.",
        only_if=("gcloud", "scheduler", "jobs", "describe", job, f"--location={s.region}", p, "--format=value(name)"),
    ))
    for role in ("deletions", "load", "submit"):
        name = s.function_name(role)
        steps.append(Step(
            f"Delete function {name}",
            ("gcloud", "functions", "delete", name, "--gen2", f"--region={s.region}", p, "--quiet"),
            only_if=("gcloud", "functions", "describe", name, f"--region={s.region}", p, "--format=value(name)"),
        ))
    for who, iam_role, _ in PROJECT_LEVEL_GRANTS:
        if who == "gcs-agent":
            continue  # other storage triggers in the project may rely on it
        steps.append(Step(
            f"Remove {iam_role} from {who} on project {s.project}",
            ("gcloud", "projects", "remove-iam-policy-binding", s.project,
             f"--member=serviceAccount:{s.service_account(who)}", f"--role={iam_role}", "--condition=None",
             "--quiet"),
            tolerate="the binding is already gone (gcloud fails when asked to remove a missing binding)",
        ))
    for role in ROLES:
        steps.append(Step(
            f"Delete service account {s.service_account(role)}",
            ("gcloud", "iam", "service-accounts", "delete", s.service_account(role), p, "--quiet"),
            why="A deleted account cannot use its bucket and dataset grants any more (they then show as "
                "deleted:serviceAccount:... until someone removes them).",
            only_if=("gcloud", "iam", "service-accounts", "describe", s.service_account(role), p,
                     "--format=value(email)"),
        ))
    notes = [
        f"Kept, because they hold data: bucket gs://{s.bucket} and datasets {', '.join(s.datasets)}.",
        f"To delete them too: gcloud storage rm --recursive gs://{s.bucket} {p}; "
        + "; ".join(f"bq --project_id={s.project} rm -r -f -d {s.project}:{d}" for d in s.datasets),
    ]
    return Plan("undeploy", s, steps, {}, notes)
