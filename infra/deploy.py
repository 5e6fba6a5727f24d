#!/usr/bin/env python3
"""`make deploy` / `make undeploy`: thin entry point; the planner lives in src/gleanpipe/deploy/.

    infra/deploy.py [deploy|undeploy|package] [--dry-run] [--json] [--settings FILE]

Settings: GLEANPIPE_DEPLOY_* variables, or a file like infra/deploy.env.example (README,
"Deploy to Google Cloud").
"""

import sys

from gleanpipe.deploy.__main__ import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
