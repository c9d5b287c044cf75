"""`python -m dd_prompting.distill`: the `dd-distill` command."""

from dd_prompting.distill.run.cli import main

raise SystemExit(main())
