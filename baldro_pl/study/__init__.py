"""``baldro-pl study SPEC.yaml``: a resumable sweep of unlearning fits, with tables and plots (docs/study.md).

    baldro-pl study configs/study/demo.yaml                 # run or resume
    baldro-pl study configs/study/demo.yaml --dry-run       # validate, list the cells and what is finished
    baldro-pl study configs/study/demo.yaml --workers 2     # two cells at once (CPU threads split between them)

From Python: ``baldro_pl.study.run_study("spec.yaml")`` or ``run_study({...})`` (a mapping with the same fields).

The spec (YAML; relative paths are relative to the working directory, as in the presets)::

    title: NPO on the demo set                # optional: the report's title
    output_dir: outputs/study/demo            # required: cells/, reference/, models/, results.*, report.md, *.png
    prepare:                                  # optional: called once, in process, before anything else (idempotent)
      function: baldro_pl.demo.prepare_demo   # package.module.function
      args: {out_dir: outputs/demo}           # keyword arguments (may use ${output_dir})
    # Any string below may use ${output_dir} and ${prepare.<key>} (a key of the mapping `prepare` returned).
    target:                                   # the model every cell unlearns from
      path: ${prepare.base}                   # used as is when it holds config.json; else made by:
      finetune: [configs/finetune.yaml]       # `baldro-pl fit -c ... <args> --model.init_args.output_dir <path>`
      args: [--data.init_args.train, data/full.jsonl]      # (path defaults to <output_dir>/models/target)
    retain:                                   # the reference of forget quality, balance and privleak
      log: outputs/demo/eval/retain/TOFU_EVAL.json          # used as is when it exists; else the retain model
      path: outputs/demo/models/retain        # (path / finetune / args as for target) is evaluated to make it
    unlearn:                                  # the `baldro-pl fit` config every cell starts from
      configs: [configs/demo.yaml]            # an UnlearningModule, a TOFU-style datamodule, the trainer
      args: [--data.init_args.data_dir, ${prepare.data}]    # extra command-line overrides
    evaluation:                               # optional: the cells' Evaluation callback (TOFU suite)
      every_n_epochs: 1                       # per-epoch points of plot (c); the final model is always evaluated
      init_args: {max_new_tokens: 32}         # overrides of the unlearning config's Evaluation / TOFUSuite arguments
    grid:
      methods:                                # required, at least one
        - name: NPO + DV hard                 # required, unique: the label in tables and plots
          base: NPO                           # optional: the report table (default: the forget loss's class name)
          forget_loss: {class_path: baldro_pl.objectives.NPO, init_args: {beta: 0.1}}
          aggregator: {class_path: baldro_pl.objectives.BalDRODV, init_args: {temperature: 1.0}}
          retain_loss: {class_path: baldro_pl.objectives.NLL}
          gamma: 1.0                          # optional: model.init_args.gamma / alpha
          alpha: 1.0
          model_args: {}                      # optional: any other model.init_args
          learning_rates: [1.0e-4]            # optional: this method's own list
      learning_rates: [3.0e-4]                # optional (default: the unlearning config's learning_rate)
      epochs: [5]                             # optional (default: its trainer.max_epochs)
      seeds: [0, 1, 2]                        # required: seed_everything and the datamodule's seed
    workers: 1                                # optional: cells at once (--workers overrides)
    keep_checkpoints: false                   # optional: keep each cell's Lightning checkpoints
    export_models: true                       # optional: each cell's final model in cells/<hash>/hf_model

A method block left out keeps the unlearning config's; a block with only ``init_args`` updates the config's block (same
class). Each ``class_path`` is imported and must be a ``ForgetLoss`` / ``Aggregator`` / ``RetainLoss``; a bare name
(``NPO``) means ``baldro_pl.objectives.NPO``.

Every cell (method x learning rate x epochs x seed) is one ``baldro-pl fit`` child process in
``<output_dir>/cells/<hash>/`` (hash: a short sha256 of the cell's resolved config): ``config.yaml``, ``fit.log``,
``eval/epoch_<n>/TOFU_{EVAL,SUMMARY}.json``, ``hf_model/``, ``cell_report.json`` and, once everything succeeded,
``result.json``. A rerun skips the cells that have ``result.json`` and redoes the others from scratch; Ctrl-C or
SIGTERM stops the running children and leaves no ``result.json`` behind for them.
"""

from baldro_pl.study.processes import Interrupted
from baldro_pl.study.runner import StudyError, main, plan_study, run_study
from baldro_pl.study.spec import StudySpec, StudySpecError, load_spec, parse_spec

__all__ = [
    "Interrupted",
    "StudyError",
    "StudySpec",
    "StudySpecError",
    "load_spec",
    "main",
    "parse_spec",
    "plan_study",
    "run_study",
]
