from dd_prompting.evals.cli import main

raise SystemExit(main())
