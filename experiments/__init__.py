"""The study behind docs/results.md, beside the package and not installed with it.

It uses mixemb as a user would, through its public API:

* ``presets.toml`` / ``presets.py``: the experiments (data, task, model, config, methods),
  budgets and seeds of each preset, as data;
* ``runner.py``: runs a preset's cells into ``<out>/<experiment>/results.json``, resumable,
  with ``shared_out.py`` letting several processes share one ``--out``;
* ``report.py`` (with ``tables.py`` and ``verdict.py``): docs/results.md from the cells;
* ``dnis_ablation.py``: the validation-only ablations of docs/ablation.md.

Run from the repository root: ``python -m experiments run|report`` (``make results``).
"""
