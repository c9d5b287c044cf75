"""Deprecated path `dd_prompting.distill.cli`: moved to `dd_prompting.distill.run.cli` in 0.2.0; it goes in 0.3.0."""

from dd_prompting.distill._moved import moved_module_getattr, warn_moved

__getattr__ = moved_module_getattr(__name__, ['dd_prompting.distill.run.cli'])


if __name__ == "__main__":  # `python -m dd_prompting.distill.cli`, as 0.1.0's README showed
    from dd_prompting.distill.run.cli import main

    warn_moved("dd_prompting.distill.cli", "dd_prompting.distill (python -m dd_prompting.distill)")
    raise SystemExit(main())
