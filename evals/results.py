"""`dd_prompting.evals.results`, 0.1.0's path of the result store, which both `dd-evals` and `dd-distill` use now:
it lives in `dd_prompting.result_store`."""

from dd_prompting.result_store import ResultStore, count_duplicates, latest_rows, row_key

__all__ = ["ResultStore", "row_key", "latest_rows", "count_duplicates"]
