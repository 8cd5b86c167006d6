"""tests/datasource/inner/ imports a real cloud-init, one version per process: it is run
by test_cloud_init_versions.py in subprocesses, never collected by the outer run."""

import os

collect_ignore = [] if os.environ.get("XENCHANNEL_CLOUD_INIT_VERSION") else ["inner"]
