"""python -m gleanpipe.deploy {deploy,undeploy,package} [--dry-run] [--json] [--settings FILE]

Exit status: 0 done, 1 a cloud step or precondition failed, 2 the settings are wrong,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .package import PackageError, build_function_source
from .plan import deploy_plan, undeploy_plan
from .runner import DeployError, check_cloud_cli, print_plan, run_plan, write_files
from .settings import DeploySettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gleanpipe-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", default="deploy", choices=("deploy", "undeploy", "package"))
    parser.add_argument("--dry-run", action="store_true", help="print every resource and command; call nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON (argv lists)")
    parser.add_argument("--settings", help="KEY=VALUE file of GLEANPIPE_DEPLOY_* settings (env wins)")
    parser.add_argument("--build-dir", default="build/deploy", help="where the function source and files go")
    args = parser.parse_args(argv)
    build = Path(args.build_dir)
    source_dir = build / "function"

    try:
        if args.action == "package":
            print(f"function source built in {build_function_source(source_dir)}")
            return 0
        settings = load_settings(settings_file=args.settings)
        if args.action == "deploy":
            plan = deploy_plan(settings, str(source_dir), str(build / "lifecycle.json"))
        else:
            plan = undeploy_plan(settings)
        if not args.dry_run:
            account = check_cloud_cli()
            print(f"gcloud account: {account}")
        if plan.action == "deploy":
            build_function_source(source_dir)
        if args.dry_run:
            write_files(plan)
            if args.json:
                print(plan.as_json())
            else:
                extra = {"function source": f"{source_dir} (built)"} if plan.action == "deploy" else {}
                print_plan(plan, sys.stdout, extra)
            return 0
        values = run_plan(plan, sys.stdout)
        if "SUBMIT_URL" in values:
            print(f"\nDone. Glean SDK server endpoint: {values['SUBMIT_URL']}")
        else:
            print("\nDone.")
        return 0
    except DeploySettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("Set them in the environment or in a file passed with --settings (make deploy SETTINGS=FILE); "
              "see README, 'Deploy to Google Cloud'.", file=sys.stderr)
        return 2
    except (DeployError, PackageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the step running was cut; every step is safe to run again
        print(f"\ninterrupted: {args.action} stopped part-way. Run the same command again to finish it: "
              "steps already done are skipped or unchanged.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
