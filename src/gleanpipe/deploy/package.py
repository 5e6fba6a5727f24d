"""Build the folder that ``gcloud functions deploy --source`` uploads.

    <out>/main.py            functions/main.py as is
    <out>/requirements.txt   gleanpipe's runtime dependencies plus the ``gcp`` extra, constrained by
    <out>/constraints.txt    the repository's constraints.txt: the versions the tests passed with
    <out>/gleanpipe/         the package, copied (vendored), with schemas/glean.1.schema.json
    <out>/.gcloudignore      keeps bytecode caches out of the upload

Why a copy and not a wheel referenced from requirements.txt: Cloud Functions puts the source
folder on ``sys.path``, so a copied package needs no build step, no build backend and no
relative file path inside requirements.txt; the folder imports the same way under the Cloud
Functions buildpack, under ``functions-framework --source`` and in the tests. The copy lays the
schema out exactly as the wheel does (``gleanpipe/schemas/``), so ``validation.load_schema``
finds it as package data. ``gleanpipe/deploy`` (this code) is left out: functions never use it.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MARKER = "# built by gleanpipe.deploy.package: this folder is replaced on every build\n"
LEFT_OUT = ("__pycache__", "*.pyc", "deploy")


class PackageError(RuntimeError):
    pass


def requirements(root: Path = ROOT) -> list[str]:
    """Runtime dependencies from pyproject.toml, then the gcp extra (GCS and BigQuery clients)."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    if "gcp" not in extras:
        raise PackageError("pyproject.toml has no `gcp` extra: the function needs google-cloud-storage and "
                           "google-cloud-bigquery")
    return [*project["dependencies"], *extras["gcp"]]


def build_function_source(out_dir: str | Path, root: Path = ROOT) -> Path:
    """(Re)build the deployable folder at out_dir; returns its path."""
    out = Path(out_dir)
    main_py = root / "functions" / "main.py"
    package = root / "src" / "gleanpipe"
    schema = root / "schemas" / "glean.1.schema.json"
    constraints = root / "constraints.txt"
    for needed in (main_py, package, schema, root / "pyproject.toml", constraints):
        if not needed.exists():
            raise PackageError(f"{needed} is missing: build the function source from a gleanpipe checkout")
    if out.exists():
        ignore_file = out / ".gcloudignore"
        ours = ignore_file.is_file() and ignore_file.read_text(encoding="utf-8").startswith(MARKER)
        if any(out.iterdir()) and not ours:
            raise PackageError(f"{out} exists and was not built by gleanpipe: refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(main_py, out / "main.py")
    shutil.copytree(package, out / "gleanpipe", ignore=shutil.ignore_patterns(*LEFT_OUT))
    (out / "gleanpipe" / "schemas").mkdir(exist_ok=True)
    shutil.copy2(schema, out / "gleanpipe" / "schemas" / schema.name)
    shutil.copy2(constraints, out / "constraints.txt")
    (out / "requirements.txt").write_text(
        "# gleanpipe's runtime dependencies (pyproject.toml) and its gcp extra; gleanpipe itself is in ./gleanpipe.\n"
        "# pip takes the versions from constraints.txt (beside this file): the ones gleanpipe's tests passed with.\n"
        "-c constraints.txt\n"
        + "".join(f"{req}\n" for req in requirements(root)),
        encoding="utf-8",
    )
    (out / ".gcloudignore").write_text(MARKER + "__pycache__/\n*.pyc\n", encoding="utf-8")
    return out
