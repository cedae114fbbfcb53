"""python -m projects.home.recap.gpu_check [--out DIR]: see runner.py."""

from projects.home.recap.gpu_check.runner import main

raise SystemExit(main())
