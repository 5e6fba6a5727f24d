"""GLEANPIPE_DEPLOY_* settings: defaults < settings file < environment, every value checked.

All problems are collected and reported together, each naming its variable, so one run of
``make deploy DRY_RUN=1`` tells a user everything that is wrong with their settings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import SETTINGS
from ..naming import APP_ID_RE, dataset_name

PREFIX = "GLEANPIPE_DEPLOY_"
NAMES = tuple(name for name in SETTINGS if name.startswith(PREFIX))

# https://cloud.google.com/resource-manager/docs/creating-managing-projects: 6-30 characters,
# lower-case letters, digits and hyphens, starting with a letter, not ending with a hyphen.
PROJECT_RE = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
# Bucket names: 3-63 of [a-z0-9_-], starting and ending with a letter or digit. Dotted names are
# refused on purpose: they need a verified domain, which a deploy script cannot arrange.
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]")
# Regions look like us-central1, europe-west4, northamerica-northeast1, me-central2.
REGION_RE = re.compile(r"[a-z]+(-[a-z]+)+[0-9]{1,2}")
# BigQuery location: a region, or the multi-regions US and EU.
MULTI_REGIONS = ("US", "EU")
PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,61}(/[a-z0-9][a-z0-9_-]{0,61}){0,3}")
NAME_PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,20}[a-z0-9]")
MEMORY_RE = re.compile(r"([0-9]+)(Mi|Gi)")
RUNTIME_RE = re.compile(r"python3[0-9]{1,2}")
SA_EMAIL_RE = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com|[0-9]+-compute@developer\.gserviceaccount\.com|[0-9]+@cloudbuild\.gserviceaccount\.com")
ACTIONS = ("delete", "archive")
INTERNAL_DATASET = "_gleanpipe"
# unix-cron, as Cloud Scheduler reads it: five fields, each a list of *, */N, A, A-B or A-B/N.
CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
               ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
               ("day of week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")))
CRON_ITEM_RE = re.compile(r"(\*|(?P<a>[0-9]+|[A-Za-z]{3})(-(?P<b>[0-9]+|[A-Za-z]{3}))?)(/(?P<step>[0-9]+))?")


class DeploySettingsError(ValueError):
    """One or more settings are missing or wrong; the message lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("deploy settings are not valid:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class DeploySettings:
    project: str
    region: str
    bucket: str
    store_prefix: str
    apps: tuple[str, ...]
    bq_location: str
    raw_days: int
    raw_action: str
    name_prefix: str
    runtime: str
    submit_memory: str
    submit_max_instances: int
    load_memory: str
    load_max_instances: int
    load_timeout: int
    build_service_account: str
    deletions_schedule: str = "*/30 * * * *"

    # Derived names, all from checked parts.
    @property
    def datasets(self) -> tuple[str, ...]:
        """The app datasets (Mozilla's naming) and gleanpipe's own, in a stable order."""
        names = sorted({dataset_name(app) for app in self.apps})
        return (*names, INTERNAL_DATASET)

    @property
    def store_url(self) -> str:
        return f"gs://{self.bucket}/{self.store_prefix}"

    @property
    def warehouse_url(self) -> str:
        return f"bigquery://{self.project}/{self.bq_location}"

    def function_name(self, role: str) -> str:
        return f"{self.name_prefix}-{role}"

    def service_account_id(self, role: str) -> str:
        return f"{self.name_prefix}-{role}"

    def service_account(self, role: str) -> str:
        return f"{self.service_account_id(role)}@{self.project}.iam.gserviceaccount.com"


def _parse_settings_file(path: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """(the well-formed lines' values, a problem for each line that is not KEY=VALUE)."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DeploySettingsError([f"GLEANPIPE_DEPLOY_SETTINGS: cannot read {path}: {exc.strerror}"]) from None
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            problems.append(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values, problems


def load_settings(environ: dict[str, str] | None = None, settings_file: str | None = None) -> DeploySettings:
    """Settings from defaults, then the settings file (argument or GLEANPIPE_DEPLOY_SETTINGS), then env."""
    env = dict(os.environ if environ is None else environ)
    path = settings_file or env.get("GLEANPIPE_DEPLOY_SETTINGS", "")
    raw: dict[str, str] = {}
    problems: list[str] = []
    if path:
        file_values, problems = _parse_settings_file(path)  # a bad line hides none of the other problems
        for key in file_values:
            if key not in NAMES or key == "GLEANPIPE_DEPLOY_SETTINGS":
                problems.append(f"{key} (in {path}): not a deploy setting; known: {', '.join(NAMES[1:])}")
        raw.update({k: v for k, v in file_values.items() if k in NAMES})
    for key, value in env.items():
        if key.startswith(PREFIX):
            if key not in NAMES:
                problems.append(f"{key}: not a deploy setting (typo?); known: {', '.join(NAMES)}")
            elif value != "":
                raw[key] = value

    def get(name: str) -> str:
        return raw.get(name, SETTINGS[name].default).strip()

    def positive(name: str, upper: int) -> int:
        text = get(name)
        try:
            value = int(text)
        except ValueError:
            problems.append(f"{name}: must be a whole number, got {text!r}")
            return 1
        if not 1 <= value <= upper:
            problems.append(f"{name}: must be between 1 and {upper}, got {value}")
        return value

    def memory(name: str) -> str:
        text = get(name)
        m = MEMORY_RE.fullmatch(text)
        mib = int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1) if m else 0
        if not m or not 128 <= mib <= 32 * 1024:
            problems.append(f"{name}: must be a size like 256Mi or 1Gi between 128Mi and 32Gi, got {text!r}")
        return text

    project = get("GLEANPIPE_DEPLOY_PROJECT")
    if not project:
        problems.append("GLEANPIPE_DEPLOY_PROJECT: missing; set it to your Google Cloud project id")
    elif not PROJECT_RE.fullmatch(project):
        problems.append(
            f"GLEANPIPE_DEPLOY_PROJECT: {project!r} is not a project id (6-30 characters of a-z, 0-9 and '-', "
            "starting with a letter, not ending with '-'; the id, not the display name or number)"
        )

    region = get("GLEANPIPE_DEPLOY_REGION")
    if not REGION_RE.fullmatch(region):
        problems.append(f"GLEANPIPE_DEPLOY_REGION: {region!r} is not a region name like us-central1 or europe-west4")

    bucket = get("GLEANPIPE_DEPLOY_BUCKET") or (f"{project}-gleanpipe-raw" if project else "")
    if bucket and not _bucket_ok(bucket):
        problems.append(
            f"GLEANPIPE_DEPLOY_BUCKET: {bucket!r} is not a usable bucket name (3-63 characters of a-z, 0-9, '-' "
            "and '_', starting and ending with a letter or digit, no dots, "
            "not starting with 'goog' nor containing 'google')"
        )

    store_prefix = get("GLEANPIPE_DEPLOY_STORE_PREFIX").strip("/")
    if not PREFIX_RE.fullmatch(store_prefix):
        problems.append(
            f"GLEANPIPE_DEPLOY_STORE_PREFIX: {store_prefix!r} must be 1-4 '/'-separated parts of a-z, 0-9, '-', '_'"
        )

    apps = tuple(a.strip() for a in get("GLEANPIPE_DEPLOY_APPS").split(",") if a.strip())
    for app in apps:
        if not APP_ID_RE.fullmatch(app):
            problems.append(f"GLEANPIPE_DEPLOY_APPS: {app!r} is not an app id (1-100 of A-Z a-z 0-9 . _ -)")

    bq_location = get("GLEANPIPE_DEPLOY_BQ_LOCATION") or region
    if bq_location.upper() in MULTI_REGIONS:
        bq_location = bq_location.upper()
    elif not REGION_RE.fullmatch(bq_location):
        problems.append(f"GLEANPIPE_DEPLOY_BQ_LOCATION: {bq_location!r} must be US, EU or a region like europe-west4")

    raw_action = get("GLEANPIPE_DEPLOY_RAW_ACTION").lower()
    if raw_action not in ACTIONS:
        problems.append(f"GLEANPIPE_DEPLOY_RAW_ACTION: must be one of {', '.join(ACTIONS)}, got {raw_action!r}")

    name_prefix = get("GLEANPIPE_DEPLOY_NAME_PREFIX")
    if not NAME_PREFIX_RE.fullmatch(name_prefix):
        problems.append(
            f"GLEANPIPE_DEPLOY_NAME_PREFIX: {name_prefix!r} must be 2-22 characters of a-z, 0-9 and '-', starting "
            "with a letter (service account ids are at most 30 characters)"
        )

    runtime = get("GLEANPIPE_DEPLOY_RUNTIME")
    if not RUNTIME_RE.fullmatch(runtime):
        problems.append(f"GLEANPIPE_DEPLOY_RUNTIME: must be a Python runtime like python312, got {runtime!r}")

    build_sa = get("GLEANPIPE_DEPLOY_BUILD_SERVICE_ACCOUNT")
    if build_sa and not SA_EMAIL_RE.fullmatch(build_sa):
        problems.append(f"GLEANPIPE_DEPLOY_BUILD_SERVICE_ACCOUNT: {build_sa!r} is not a service account email")

    deletions_schedule = " ".join(get("GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE").split())
    cron_error = cron_problem(deletions_schedule)
    if cron_error:
        problems.append(f"GLEANPIPE_DEPLOY_DELETIONS_SCHEDULE: {deletions_schedule!r} is not a unix-cron schedule "
                        f"({cron_error}); for example '*/30 * * * *' (every 30 minutes) or '15 * * * *' (hourly)")

    values = dict(
        project=project,
        region=region,
        bucket=bucket,
        store_prefix=store_prefix,
        apps=apps,
        bq_location=bq_location,
        raw_days=positive("GLEANPIPE_DEPLOY_RAW_DAYS", 36500),
        raw_action=raw_action,
        name_prefix=name_prefix,
        runtime=runtime,
        submit_memory=memory("GLEANPIPE_DEPLOY_SUBMIT_MEMORY"),
        submit_max_instances=positive("GLEANPIPE_DEPLOY_SUBMIT_MAX_INSTANCES", 1000),
        load_memory=memory("GLEANPIPE_DEPLOY_LOAD_MEMORY"),
        load_max_instances=positive("GLEANPIPE_DEPLOY_LOAD_MAX_INSTANCES", 1000),
        load_timeout=positive("GLEANPIPE_DEPLOY_LOAD_TIMEOUT", 540),
        build_service_account=build_sa,
        deletions_schedule=deletions_schedule,
    )
    if problems:
        raise DeploySettingsError(problems)
    return DeploySettings(**values)


def cron_problem(schedule: str) -> str | None:
    """What is wrong with a unix-cron schedule (minute hour day-of-month month day-of-week), or None."""
    fields = schedule.split()
    if len(fields) != 5:
        return f"5 fields expected (minute hour day-of-month month day-of-week), got {len(fields)}"
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS):
        for item in text.split(","):
            m = CRON_ITEM_RE.fullmatch(item)
            if not m:
                return f"{name}: {item!r} is not *, */N, A, A-B or A-B/N"
            bounds = []
            for part in (m.group("a"), m.group("b")):
                if part is None:
                    continue
                if part.isdigit():
                    value = int(part)
                elif part.upper() in names:
                    value = names.index(part.upper()) + (1 if name == "month" else 0)
                else:
                    return f"{name}: {part!r} is not a number" + (f" or one of {', '.join(names)}" if names else "")
                if not low <= value <= high:
                    return f"{name}: {value} is outside {low}-{high}"
                bounds.append(value)
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                return f"{name}: range {item!r} runs backwards"
            step = m.group("step")
            if step is not None and not 1 <= int(step) <= high:
                return f"{name}: step {step} must be between 1 and {high}"
    return None


def _bucket_ok(name: str) -> bool:
    # No dots are allowed, so a name can never be an IP address.
    return bool(BUCKET_RE.fullmatch(name)) and not name.startswith("goog") and "google" not in name
