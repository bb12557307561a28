"""The ``wsdm`` console script. Each sub-command parses its arguments and makes one call into the package.

Modules are imported inside the handlers so ``wsdm --help`` stays fast (no torch import).
Errors the package raises on purpose (``WsdmError``) are printed without a traceback and exit 2.
Logging goes to stderr at INFO (``-q``: warnings only, ``-v``: debug); a closed stdout pipe
(``wsdm ... | head``) ends the command quietly with the shell's SIGPIPE status, 141; Ctrl-C ends it with
one line saying whether rerunning resumes, status 130 (128 + SIGINT).
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import ConfigError, WsdmError


def parse_sets(texts: list[str]) -> dict:
    """``--set key.path=value`` texts as typed overrides: each value read once as a YAML scalar/list."""
    import yaml

    overrides = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {text!r} must look like key.path=value, e.g. --set train.max_steps=100")
        try:
            overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {text!r}: the value is not a YAML literal ({exc}); quote it") from exc
    return overrides


# ---- data (foundation) ---------------------------------------------------------------------------
def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="read, validate and convert preference files").add_subparsers(
        dest="data_command", required=True)
    validate = data.add_parser("validate", help="read a file, print a summary; exit 2 with the reason on bad input")
    convert = data.add_parser("convert", help="convert a file to the canonical parquet layout")
    convert.add_argument("--out", required=True, help="output .parquet path (a new file unless --overwrite)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    from .config import DataConfig, add_field_argument

    for parser, handler in ((validate, _data_validate), (convert, _data_convert)):
        parser.add_argument("path", help="csv, parquet, json or jsonl file (optionally .gz)")
        add_field_argument(parser, "--layout", DataConfig, "layout")
        add_field_argument(parser, "--ties", DataConfig, "ties")
        parser.add_argument("--map", action="append", default=[], metavar="KEY=COLUMN",
                            help="column map for --layout columns, e.g. --map prompt=input --map winner=label")
        parser.set_defaults(handler=handler)
    demo = sub.add_parser("demo-data", help="write the multilingual demo set in the WSDM layout")
    demo.add_argument("--out", required=True)
    demo.add_argument("--n-train", type=int, default=2000)
    demo.add_argument("--n-test", type=int, default=400)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo_data)


def _read_for_cli(args: argparse.Namespace):
    from .data import read_pairs

    column_map = dict(item.split("=", 1) for item in args.map if "=" in item)
    if len(column_map) != len(args.map):
        raise ConfigError(f"--map values must look like KEY=COLUMN, got {args.map}")
    return read_pairs(args.path, layout=args.layout, ties=args.ties, column_map=column_map or None)


def _data_validate(args: argparse.Namespace) -> int:
    _, report = _read_for_cli(args)
    print(report.to_text())
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from .data import check_canonical_out, write_canonical

    check_canonical_out(args.out, args.path, overwrite=args.overwrite)
    frame, report = _read_for_cli(args)
    write_canonical(frame, args.out)
    print(report.to_text())
    print(f"wrote {len(frame)} rows to {args.out}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from .demo_data import write_demo_dataset

    paths = write_demo_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    for path in paths:
        print(f"wrote {path}")
    return 0


# ---- Kaggle bundle ---------------------------------------------------------------------------------
def _add_bundle_commands(sub: argparse._SubParsersAction) -> None:
    from .kaggle.competitions import COMPETITIONS
    from .kaggle.kernel import PUSH_ACCELERATOR

    bundle = sub.add_parser("bundle", help="build and check folders for the Kaggle CLI (offline scoring)"
                            ).add_subparsers(dest="bundle_command", required=True)
    wheels = bundle.add_parser("wheels", help="wheelhouse dataset: wsdm_helpers and its whole closure but torch, "
                                              "for one notebook image")
    wheels.add_argument("--out", help="bundle folder to (re)create (required unless --resolve-only)")
    wheels.add_argument("--image", default=None,
                        help="target notebook image, a name declared in wsdm_helpers/kaggle/images.py (default: "
                             "the current Kaggle image): its Python version and the torch it keeps")
    wheels.add_argument("--python-version", help="target CPython version (overrides the image's)")
    wheels.add_argument("--torch", help="the target's torch version, kept as it is (overrides the image's)")
    wheels.add_argument("--packages", nargs="*", default=None,
                        help="requirements pinned on top of the closure (default: peft at the installed version)")
    wheels.add_argument("--glibc", default="2.35", help="target glibc: wheels for manylinux up to it are accepted "
                                                       "(Kaggle's and Colab's Ubuntu 22.04: 2.35)")
    wheels.add_argument("--platform", action="append", default=None,
                        help="explicit pip platform tag (repeatable); replaces the --glibc list")
    wheels.add_argument("--find-links", action="append", default=[], help="local folder of wheels (repeatable)")
    wheels.add_argument("--no-index", action="store_true", help="do not use PyPI (with --find-links)")
    wheels.add_argument("--username", help="Kaggle owner of the dataset id (default $KAGGLE_USERNAME)")
    wheels.add_argument("--vllm", action="store_true",
                        help="also carry vLLM's CUDA wheel and its closure (inference.backend=vllm): vLLM pins its own "
                             "torch: where it is not the image's, that torch and its CUDA wheels (GBs) come along and "
                             "replace the image's")
    wheels.add_argument("--resolve-only", action="store_true",
                        help="resolve and print the closure (version, what it replaces, wheel size) without "
                             "downloading the wheels or writing --out")
    wheels.set_defaults(handler=_bundle_wheels)
    adapter = bundle.add_parser("adapter", help="model dataset from a training run folder (safetensors only)")
    adapter.add_argument("run_dir")
    adapter.add_argument("--out", required=True)
    adapter.add_argument("--base-model", help="where the backbone lies on Kaggle, e.g. /kaggle/input/gemma-2/...")
    adapter.add_argument("--username")
    adapter.add_argument("--slug", help="dataset slug (default wsdm-adapter; one per model of an ensemble)")
    adapter.add_argument("--title", help="dataset title, 6-50 characters")
    adapter.add_argument("--merged", nargs="?", const="bfloat16", choices=["bfloat16", "float32"],
                         help="also ship the adapter merged into the base (merged/, in this dtype; default "
                         "bfloat16) for inference.backend=vllm, so Kaggle loads it without the base or a merge")
    adapter.set_defaults(handler=_bundle_adapter)
    kernel = bundle.add_parser("kernel", help="scoring notebook + kernel-metadata.json (GPU on, internet off)")
    kernel.add_argument("--notebook", required=True)
    kernel.add_argument("--out", required=True)
    kernel.add_argument("--title", default="WSDM inference", help="kernel title; the id's slug is derived from it")
    kernel.add_argument("--competition", default="wsdm", choices=sorted(COMPETITIONS),
                        help="the competition to attach: " + ", ".join(f"{k} = {c.slug}" for k, c in COMPETITIONS.items()))
    kernel.add_argument("--dataset", action="append", default=[], help="[owner/]dataset-slug to attach (repeatable)")
    kernel.add_argument("--adapter-dir", action="append", default=[], metavar="BUNDLE",
                        help="a folder `wsdm bundle adapter` wrote: its dataset is attached and its base model must "
                             "be attached too (--dataset or --model), else the bundle is refused (repeatable)")
    kernel.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                        help="a notebook parameter written into the bundled notebook's parameters cell (VALUE is a "
                             "YAML literal, checked against the notebook's declared parameters)")
    kernel.add_argument("--machine-shape", default=PUSH_ACCELERATOR,
                        help="the GPU kernel's accelerator (kernel-metadata.json machine_shape; default %(default)s, "
                             "Kaggle's GPU T4 x2)")
    kernel.add_argument("--model", action="append", default=[],
                        help="Kaggle Model owner/model/framework/variation/version (repeatable)")
    kernel.add_argument("--kernel-source", action="append", default=[], help="[owner/]kernel-slug to attach")
    kernel.add_argument("--cpu", action="store_true", help="run without a GPU")
    kernel.add_argument("--public", action="store_true", help="make the kernel public")
    kernel.add_argument("--username")
    kernel.set_defaults(handler=_bundle_kernel)
    for parser in (wheels, adapter, kernel):
        parser.add_argument("--replace", action="store_true",
                            help="rebuild over an earlier bundle in --out (refused if it holds files the bundle "
                                 "did not write)")
    check = bundle.add_parser("check", help="run the pre-upload checks on a bundle folder")
    check.add_argument("path")
    check.set_defaults(handler=_bundle_check)


def _bundle_wheels(args: argparse.Namespace) -> int:
    from .kaggle.wheels import (
        DATASET,
        DEFAULT_IMAGE,
        build_wheelhouse,
        linux_platforms,
        offline_install_command,
        resolve_wheelhouse,
        wheelhouse_summary,
    )

    image = args.image or (None if args.python_version and args.torch else DEFAULT_IMAGE)
    target = dict(image=image, python_version=args.python_version, torch=args.torch, vllm=args.vllm,
                  platforms=args.platform or linux_platforms(args.glibc), find_links=args.find_links,
                  no_index=args.no_index)
    if args.resolve_only:
        plan, sizes = resolve_wheelhouse(args.packages, **target)
        known = [size for size in sizes.values() if size is not None]
        print(f"{plan.project} for CPython {plan.python_version} ({image or 'no declared image'}):")
        print(plan.table(sizes))
        print(f"{plan.torch_note()}; {len(sizes)} wheels carried, {sum(known):,} bytes ({sum(known) / 1e9:.2f} GB)"
              + ("" if len(known) == len(sizes) else f" for the {len(known)} whose size the index gave"))
        return 0
    if not args.out:
        raise ConfigError("wsdm bundle wheels needs --out FOLDER (or --resolve-only to print the closure)")
    report = build_wheelhouse(args.out, args.packages, username=args.username, replace=args.replace, **target)
    print(report.to_text())
    print(wheelhouse_summary(args.out))
    print(f"upload: kaggle datasets create -p {args.out}")
    print(f"install in the notebook: {offline_install_command(f'/kaggle/input/{DATASET}')}")
    return 0


def _bundle_adapter(args: argparse.Namespace) -> int:
    from .kaggle.adapter import bundle_adapter

    report = bundle_adapter(args.run_dir, args.out, base_model=args.base_model, username=args.username,
                            slug=args.slug, title=args.title, replace=args.replace, merged=args.merged)
    print(report.to_text())
    print(f"upload: kaggle datasets create -p {args.out}")
    return 0


def _bundle_kernel(args: argparse.Namespace) -> int:
    from .kaggle.kernel import bundle_kernel
    from .notebook_runner import parse_cli_parameters

    report = bundle_kernel(args.notebook, args.out, competition=args.competition, datasets=args.dataset,
                           models=args.model, kernels=args.kernel_source, adapters=args.adapter_dir,
                           parameters=parse_cli_parameters(args.parameter), title=args.title,
                           username=args.username, enable_gpu=not args.cpu, machine_shape=args.machine_shape,
                           is_private=not args.public, replace=args.replace)
    print(report.to_text())
    print(f"push: kaggle kernels push -p {args.out}" + ("" if args.cpu else f" --accelerator {args.machine_shape}"))
    return 0


def _bundle_check(args: argparse.Namespace) -> int:
    from .kaggle.checks import check_bundle

    print(check_bundle(args.path).to_text())
    return 0


# ---- notebooks and the demo ---------------------------------------------------------------------
def _add_notebook_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run-notebook", help="run notebooks/NAME.ipynb through papermill with checked parameters",
                         description="Executes the notebook in a Jupyter kernel into OUT_ROOT/NAME-TIMESTAMP/ "
                                     "(executed notebook, params.yaml, artifacts). Unknown parameter names are "
                                     "an error; list them with `papermill --help-notebook notebooks/NAME.ipynb`.")
    run.add_argument("name", help="notebook name in notebooks/ (train_gemma, train_deberta, inference, "
                                  "ensemble_oof) or a path to an .ipynb")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                     help="a parameter; VALUE is read as a YAML literal (20, 1e-4, true, '[a, b]')")
    run.add_argument("--params-file", help="YAML mapping of parameters (-p values win)")
    run.add_argument("--out-root", default="runs/notebooks", help="parent of the timestamped output folder")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    run.set_defaults(handler=_run_notebook)
    demo = sub.add_parser("demo", help="the main job: demo data, Gemma 3 270M LoRA on CPU, inference, summary")
    demo.add_argument("--out", default="demo_output", help="folder for data, executed notebooks, run, submission")
    demo.add_argument("--config", default="cpu-demo-gemma3-270m", help="training preset (name in configs/ or path)")
    demo.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                      help="extra train_gemma.ipynb parameter, e.g. -p max_steps 20")
    demo.set_defaults(handler=_demo)


def _run_notebook(args: argparse.Namespace) -> int:
    from .notebook_runner import parse_cli_parameters, run_notebook

    run = run_notebook(args.name, parse_cli_parameters(args.parameter, args.params_file),
                       out_root=args.out_root, kernel_name=args.kernel)
    print(f"executed {run.notebook} in {run.seconds:.0f} s; artifacts and params.yaml in {run.out_dir}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .notebook_runner import parse_cli_parameters

    summary = run_demo(args.out, config=args.config, train_parameters=parse_cli_parameters(args.parameter))
    print(summary.to_text())
    return 0


# ---- predict / ensemble / baseline (inference) ----------------------------------------------------
_PREDICT_DESCRIPTION = """\
Predict the test file with every run (LLM run folders from `wsdm train`, feature-baseline run folders
from `wsdm baseline --run-dir`), blend, fill and write a validated submission; the same pipeline as
notebooks/inference.ipynb, so the same inputs give the same file.

Clock: with --time-budget-minutes, the whole submission (loading included) ends before the budget
less --safety-minutes. The time is shared among the runs still to go; each run gives up swap TTA
first and context second, and stops before a batch that would end late. Rows a run did not reach
(or returned as NaN) are filled from the other runs, then from feature baselines given with weight 0,
then 0.5. A plan-vs-actual report is printed and saved as submission_report.json beside --out.
Outside Kaggle's competition rerun the command then ends with rc 2 when a weighted run failed or more
than --max-fallback-share of the rows came from fallbacks (--on-failure).

Cascades: `--rows uncertain:SHARE` after a --run makes it a cascade member: it scores only that share of
the test rows, the ones the blend of the weighted runs before it is least sure of (smallest |P(a) - P(b)|,
ties by id), and its weight counts on those rows only. Under the clock its rows shrink from the most
certain end (after TTA, before context), never grow. `wsdm ensemble fit --cascade-shares` picks the share
out of fold. The report shows the planned and actual share of rows per run.

Layout: the test file's (WSDM test: id,winner; LMSYS test: id + three probabilities) unless --task.

Resume: finished chunks are saved under --work-dir (default .wsdm-chunks beside --out) and reused
when the same command is run again with the same runs, test rows and settings. On by default when
--out is under /kaggle/working, off elsewhere: --resume / --no-resume.
"""


def _add_predict_commands(sub: argparse._SubParsersAction) -> None:
    from .config import BlendMetric, BlendSpace, Task, Ties, add_field_argument, choices
    from .pipeline import PipelineConfig

    predict = sub.add_parser("predict", help="predict with trained runs under one clock, blend, write a submission",
                             description=_PREDICT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("--run", action=_RunAction, required=True,
                         help="run folder: LLM or feature baseline (repeat to blend several)")
    predict.add_argument("--rows", action=_RowsAction, default=argparse.SUPPRESS, metavar="POLICY",
                         help="row policy of the --run just before it: all (the default) or uncertain:SHARE, a "
                         "cascade member that scores only that share of the rows, the ones the weighted runs "
                         "before it are least sure of (e.g. --run baseline --run gemma --rows uncertain:0.35)")
    predict.add_argument("--weights", type=float, nargs="+",
                         help="one blend weight per --run; 0 for a baseline = fallback only")
    predict.add_argument("--blend-space", default="probability", choices=choices(BlendSpace),
                         help="probability: weighted mean of probabilities; log_odds: softmax of the weighted "
                         "sum of log-probabilities (weights from `wsdm ensemble fit --space log_odds`)")
    predict.add_argument("--test", required=True, help="test file (any supported layout)")
    predict.add_argument("--out", required=True, help="submission csv")
    predict.add_argument("--probs-out", help="also write the blended probabilities (parquet)")
    predict.add_argument("--task", default="auto", choices=["auto", *choices(Task)],
                         help="submission layout (auto: the test file's layout, never the class count)")
    predict.add_argument("--time-budget-minutes", type=float, help="the whole submission ends within this; "
                         "default: on Kaggle the attached competition's limit (720 for WSDM, 540 for LMSYS), "
                         "elsewhere no limit")
    predict.add_argument("--safety-minutes", type=float, default=5.0, help="minutes of the budget kept free")
    predict.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                         help="save and reuse finished chunks (default: on under /kaggle/working, else off)")
    predict.add_argument("--work-dir", default="", help="folder for resumable chunks (default .wsdm-chunks "
                         "beside --out)")
    predict.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE",
                         help="override every LLM run's inference settings, e.g. inference.tta=selective, "
                         "model.dtype=auto or model.quantization=4bit")
    add_field_argument(predict, "--on-failure", PipelineConfig, "on_failure")
    add_field_argument(predict, "--max-fallback-share", PipelineConfig, "max_fallback_share", type=float)
    predict.set_defaults(handler=_predict)
    submit = sub.add_parser("submit", help="turn a probabilities file into a validated submission")
    submit.add_argument("probs", help="predictions parquet/csv (id, winner_model_a, winner_model_b[, winner_tie])")
    submit.add_argument("--test", required=True, help="test file: its ids and layout decide the submission")
    submit.add_argument("--out", required=True, help="submission csv")
    submit.add_argument("--task", default="auto", choices=["auto", *choices(Task)],
                        help="submission layout (auto: the test file's layout)")
    submit.set_defaults(handler=_submit)
    ensemble = sub.add_parser("ensemble", help="blend prediction files joined on id; `wsdm ensemble fit OOF... "
                              "--out weights.json` fits weights on out-of-fold files")
    ensemble.add_argument("predictions", nargs="+", help="prediction parquet/csv files")
    ensemble.add_argument("--weights", type=float, nargs="+", help="one weight per file (default: equal)")
    ensemble.add_argument("--oof", nargs="+", help="fit the weights on these out-of-fold files (one per file)")
    ensemble.add_argument("--metric", default="log_loss", choices=choices(BlendMetric))
    ensemble.add_argument("--space", default="probability", choices=choices(BlendSpace),
                          help="probability: weighted mean of probabilities (weights sum to 1); log_odds: softmax of "
                          "the weighted sum of log-probabilities (weights >= 0, their scale is a temperature)")
    ensemble.add_argument("--cascade-shares", type=float, nargs="+", metavar="SHARE",
                          help="fit: also score cascades, each member after the first rescoring one of these shares "
                          "of the rows (or all), the most uncertain under the members before it "
                          "(wsdm predict --rows uncertain:SHARE), e.g. 0.1 0.2 0.3 0.5")
    ensemble.add_argument("--out", required=True)
    ensemble.set_defaults(handler=_ensemble)
    baseline = sub.add_parser("baseline", help="train the feature baseline (seconds): a run folder and/or predictions")
    baseline.add_argument("--train", required=True)
    baseline.add_argument("--run-dir", help="write a run folder (baseline.json) for wsdm predict and the notebook")
    baseline.add_argument("--test", help="test file to predict (with --out)")
    baseline.add_argument("--out", help="predictions parquet for --test")
    baseline.add_argument("--model", default="logreg", choices=["logreg", "hgb"],
                          help="logreg (the only one a run folder keeps: plain numbers, no pickle) or hgb")
    baseline.add_argument("--ties", default="keep", choices=[t for t in choices(Ties) if t != "split"],
                          help="keep: 3 classes when the training file has ties")
    baseline.set_defaults(handler=_baseline)


class _RunAction(argparse.Action):
    """``--run``: appends the run folder, and a row policy slot (``--rows`` after it fills it)."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.run = [*(getattr(namespace, "run", None) or []), value]
        namespace.rows = [*(getattr(namespace, "rows", None) or []), None]


class _RowsAction(argparse.Action):
    """``--rows POLICY``: the row policy of the ``--run`` just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        rows = getattr(namespace, "rows", None)
        if not rows or rows[-1] is not None:
            parser.error(f"--rows {value} must follow the --run it applies to (one --rows per --run), e.g. "
                         "--run runs/gemma --rows uncertain:0.35")
        rows[-1] = value


def _inference_overrides(items: list[str]) -> dict:
    """``--set inference.KEY=VALUE`` strings as typed values (YAML scalars), keyed by field name."""
    values = {}
    for key, value in parse_sets(items).items():
        if key in ("model.dtype", "model.quantization"):  # the run's, replaced for prediction (inference.*)
            key = "inference." + key.partition(".")[2]
        section, _, name = key.partition(".")
        if section != "inference" or not name or "." in name:
            raise ConfigError(f"--set {key}: wsdm predict only takes inference.* overrides, model.dtype and "
                              "model.quantization (the model and format are fixed by the run folder)")
        values[name] = value
    return values


def _predict(args: argparse.Namespace) -> int:
    from .pipeline import submit

    settings = {"task": args.task, "time_budget_minutes": args.time_budget_minutes,
                "safety_minutes": args.safety_minutes, "resume": args.resume, "work_dir": args.work_dir,
                "blend_space": args.blend_space, "on_failure": args.on_failure,
                "max_fallback_share": args.max_fallback_share}
    result = submit(args.run, args.test, args.out, weights=args.weights, overrides=_inference_overrides(args.set),
                    settings=settings, probs_out=args.probs_out, rows=args.rows)
    print(f"wrote {args.out} ({len(result.predictions)} rows)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from .pipeline import submit_probabilities

    path = submit_probabilities(args.probs, args.test, args.out, task=args.task)
    print(f"wrote {path}")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    if args.predictions[0] == "fit":  # wsdm ensemble fit OOF... --out weights.json
        return _ensemble_fit(args)
    if args.cascade_shares:
        raise ConfigError("--cascade-shares belongs to wsdm ensemble fit OOF... --out weights.json")
    from .ensemble import blend_files

    blended = blend_files(args.predictions, args.out, weights=args.weights, oof_paths=args.oof, metric=args.metric,
                          space=args.space)
    print(f"wrote {args.out} ({len(blended)} rows)")
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from .features import train_and_predict

    preds = train_and_predict(args.train, args.test, args.out, model=args.model, ties=args.ties,
                              run_dir=args.run_dir)
    if args.run_dir:
        print(f"wrote the run folder {args.run_dir}")
    if preds is not None:
        print(f"wrote {args.out} ({len(preds)} rows)")
    return 0


# ---- training (models and training) --------------------------------------------------------------
def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model from a YAML preset (LoRA/QLoRA or full fine-tuning)",
                           description="Multi-GPU: accelerate launch --num_processes N -m wsdm_helpers train ...")
    train.add_argument("--config", required=True, help="preset: a name in configs/ (e.g. cpu-demo-gemma3-270m) "
                                                        "or a YAML path")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    import json

    from .runtime import sleeping_threads

    sleeping_threads()  # before torch loads
    from .config import load_run_config, resolve_preset
    from .training import train

    result = train(load_run_config(resolve_preset(args.config), parse_sets(args.overrides)))
    if result.metrics.get("stopped"):  # train.max_hours: a checkpoint to resume from, no finished run
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, default=str))
        return 0
    print(json.dumps({"run_dir": str(result.run_dir), **result.metrics.get("final", {})}, default=str))
    return 0


# ---- evaluate (learning on real votes) -------------------------------------------------------------
def _add_evaluate_commands(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="report (markdown, JSON, PNG) on labelled rows: the model next to "
                              "longer-wins and the feature baseline",
                              description="wsdm evaluate --predictions P --labels FILE --out DIR, or "
                                          "wsdm evaluate --run RUN --data FILE --out DIR; with a pairs file "
                                          "without winners (Kaggle's test.parquet) and its labels apart: "
                                          "--data PAIRS --labels LABELS (id + label or winner, joined on id)")
    evaluate.add_argument("--predictions", help="predictions file (id + winner_model_a/b[/tie]) to evaluate")
    evaluate.add_argument("--labels", help="labelled rows, any layout the readers accept; with --data: a labels "
                                           "file (id + label or winner) for the pairs of --data")
    evaluate.add_argument("--swapped", help="with --predictions: predictions on the A/B-swapped rows (flip rate)")
    evaluate.add_argument("--tokenizer", help="with --predictions: tokenizer folder for the length buckets "
                                              "(default: words)")
    evaluate.add_argument("--run", help="run folder to score in both orientations")
    evaluate.add_argument("--data", help="the pairs to score (with --run: labelled unless --labels gives the labels)")
    evaluate.add_argument("--baseline-train", nargs="+", default=[], help="fit the feature baseline on these "
                          "files (default: out of fold on the evaluated rows)")
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from . import evaluate

    if bool(args.predictions) == bool(args.run) or (args.predictions and not args.labels) \
            or (args.run and not args.data):
        raise ConfigError("give either --predictions P --labels FILE or --run RUN --data FILE (the pairs and their "
                          "labels apart: --data PAIRS --labels LABELS)")
    if args.run:
        evaluate.evaluate_run(args.run, args.data, args.out, args.baseline_train, args.labels)
    else:
        evaluate.evaluate_predictions(args.predictions, args.labels, args.out, args.swapped, args.tokenizer,
                                      args.baseline_train, args.data)
    from pathlib import Path

    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return 0


def _verbosity_parser(top: bool) -> argparse.ArgumentParser:
    """-q / -v, accepted before and after the sub-command (``wsdm -q predict`` and ``wsdm predict -q``)."""
    parser = argparse.ArgumentParser(add_help=False)
    default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", dest="verbose", action="count", default=default,
                        help="more log output (debug)")
    parser.add_argument("-q", "--quiet", dest="quiet", action="count", default=default,
                        help="warnings and errors only")
    return parser


class _SubParsers(argparse._SubParsersAction):
    """Every sub-command parser gets -q / -v."""

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("parents", []).append(_verbosity_parser(top=False))
        parser = super().add_parser(name, **kwargs)
        parser.register("action", "parsers", _SubParsers)
        return parser


# ---- configs ------------------------------------------------------------------------------------
def _add_config_commands(sub: argparse._SubParsersAction) -> None:
    from .config import FormatConfig, add_field_argument

    config = sub.add_parser("config", help="inspect presets").add_subparsers(dest="config_command", required=True)
    show = config.add_parser("show", help="print the resolved config with each field's help text (valid YAML)")
    show.add_argument("preset", nargs="?", help="a name in configs/ or a YAML path (default: the built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    show.set_defaults(handler=_config_show)
    tiny = sub.add_parser("tiny-model", help="build a tiny random model (tokenizer trained on a data file) for "
                                             "smoke runs with configs/tiny-test.yaml")
    tiny.add_argument("--data", required=True, help="training file whose texts the tokenizer learns")
    tiny.add_argument("--out", required=True, help="model folder to write (model.source of tiny-test: tiny-model)")
    tiny.add_argument("--family", default="llama", help="model family (llama, qwen2, gemma2, gemma3, bert, ...)")
    add_field_argument(tiny, "--head", FormatConfig, "head")
    tiny.set_defaults(handler=_tiny_model)


def _config_show(args: argparse.Namespace) -> int:
    from .config import annotated_yaml, build_run_config, resolve_preset

    cfg, problems = build_run_config(resolve_preset(args.preset) if args.preset else None, parse_sets(args.overrides))
    print(annotated_yaml(cfg))
    if problems:
        print("problems (wsdm train would refuse this config):\n" + "\n".join(f"  - {p}" for p in problems),
              file=sys.stderr)
        return 2
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_model_from_file

    print(f"wrote {build_tiny_model_from_file(args.data, args.out, args.family, args.head)}")
    return 0


# ---- cross-validation, blend fitting, pseudo-labels ----------------------------------------------
def _add_cv_commands(sub: argparse._SubParsersAction) -> None:
    cv = sub.add_parser("cv", help="k-fold cross-validation: a run folder per fold, oof.parquet, CV report",
                        description="Trains every fold (or --folds) into OUTPUT/fold-K/ (OUTPUT = train.output_dir "
                                    "or --out), resumable fold by fold, then writes OUTPUT/oof.parquet and "
                                    "OUTPUT/cv_report.json. --baseline cross-validates the feature baseline instead.")
    cv.add_argument("--config", help="preset (required for LLM runs; with --baseline only its data section is read)")
    cv.add_argument("--baseline", choices=["logreg", "hgb"], help="cross-validate the feature baseline (seconds)")
    cv.add_argument("--folds", help="folds to train now, comma-separated (default: all), e.g. --folds 0,1")
    cv.add_argument("--folds-file", help="fold table to reuse (another model's OUTPUT/folds.parquet)")
    cv.add_argument("--data", help="training file (sets data.train_path)")
    cv.add_argument("--out", help="output folder (sets train.output_dir)")
    cv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set data.n_folds=5 (repeatable)")
    cv.set_defaults(handler=_cv)
    merge = sub.add_parser("merge-folds", help="one run folder from the k fold adapters of a cv: the exact mean of "
                           "their weight updates (rank k*r), heads averaged; predicts at the cost of one model",
                           description="Stacks the k folds' LoRA factors into one adapter of rank k*r (B scaled by "
                                       "1/k, lora_alpha by k), so its update is the mean of the folds' updates, and "
                                       "averages their heads. Folds that differ in base model, target modules, rank, "
                                       "alpha or head are refused. The result is an ordinary run folder for wsdm "
                                       "predict, the inference notebook and wsdm bundle adapter.")
    merge.add_argument("cv_dir", help="the OUTPUT folder of wsdm cv (cv_config.yaml, fold-K/ run folders)")
    merge.add_argument("--out", required=True, help="run folder to write (new or empty)")
    merge.set_defaults(handler=_merge_folds)
    pseudo = sub.add_parser("pseudo-label", help="soft labels for pairs (labelled or not) from a run or a blend")
    pseudo.add_argument("--run", action="append", required=True, help="run folder (repeat to blend several)")
    pseudo.add_argument("--weights", type=float, nargs="+", help="one blend weight per --run (default: equal)")
    pseudo.add_argument("--data", required=True, help="pairs to label (any layout; the winner may be absent)")
    pseudo.add_argument("--layout", default="auto", help="layout of --data (default auto)")
    pseudo.add_argument("--out", required=True, help="soft-label file (parquet; use it as train.distill.soft_labels)")
    pseudo.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE",
                        help="override the runs' inference settings, e.g. inference.tta=swap")
    pseudo.set_defaults(handler=_pseudo_label)


def _merge_folds(args: argparse.Namespace) -> int:
    from .merge_folds import merge_folds

    print(merge_folds(args.cv_dir, args.out).to_text())
    return 0


def _cv(args: argparse.Namespace) -> int:

    from .runtime import sleeping_threads

    sleeping_threads()  # before torch loads
    from .config import DataConfig, apply_overrides, from_dict, load_run_config, load_yaml, resolve_preset
    from .cv import parse_folds, run_baseline_cv, run_cv

    given = {"data.train_path": args.data, "train.output_dir": args.out, "data.folds_file": args.folds_file}
    overrides = {**parse_sets(args.overrides), **{k: v for k, v in given.items() if v}}
    if args.baseline:
        raw = apply_overrides(load_yaml(resolve_preset(args.config)) if args.config else {}, overrides)
        data = from_dict(DataConfig, raw.get("data", {}), "data.")
        out = (raw.get("train") or {}).get("output_dir")
        if not out:
            raise ConfigError("wsdm cv --baseline needs an output folder: --out DIR")
        result = run_baseline_cv(data, out, args.baseline, parse_folds(args.folds, data.n_folds))
    else:
        if not args.config:
            raise ConfigError("wsdm cv needs --config PRESET (or --baseline logreg for the feature baseline)")
        cfg = load_run_config(resolve_preset(args.config), overrides)
        result = run_cv(cfg, parse_folds(args.folds, cfg.data.n_folds))
    print(result.to_text())
    return 0


def _ensemble_fit(args: argparse.Namespace) -> int:
    from .ensemble import fit_oof_files, fit_report_text

    if args.weights or args.oof or len(args.predictions) < 3:
        raise ConfigError("wsdm ensemble fit takes two or more OOF files and --out weights.json "
                          "(no --weights / --oof), e.g. wsdm ensemble fit cv-a/oof.parquet cv-b/oof.parquet --out w.json")
    report = fit_oof_files(args.predictions[1:], args.out, metric=args.metric, space=args.space,
                           cascade_shares=args.cascade_shares)
    print(fit_report_text(report))
    space = "" if args.space == "probability" else f" --space {args.space} (wsdm predict: --blend-space {args.space})"
    print(f"wrote {args.out}; blend the test predictions with --weights "
          f"{' '.join(f'{w:.4f}' for w in report['weights'])}{space}")
    if args.cascade_shares:
        chosen = report["cascade"]["chosen"]
        rows = " ".join(f"(run {i + 2}: --rows uncertain:{s:g})" if s < 1 else f"(run {i + 2}: all rows)"
                        for i, s in enumerate(chosen["shares"]))
        print(f"chosen cascade: {rows}, --weights {' '.join(f'{w:.6g}' for w in chosen['weights'])}, compute "
              f"{chosen['compute']:.3f} of the full blend's later-member rows")
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from .distill import pseudo_label

    overrides = {}
    for key, value in parse_sets(args.set).items():
        section, _, name = key.partition(".")
        if section != "inference" or not name or "." in name:
            raise ConfigError(f"--set {key}: wsdm pseudo-label only takes inference.* overrides (the model and "
                              "format are fixed by the run folder)")
        overrides[name] = value
    soft = pseudo_label(args.run, args.data, args.out, weights=args.weights, overrides=overrides, layout=args.layout)
    print(f"wrote {args.out} ({len(soft)} soft labels)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsdm", description=__doc__.splitlines()[0],
                                     parents=[_verbosity_parser(top=True)])
    parser.register("action", "parsers", _SubParsers)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_predict_commands(sub)
    _add_notebook_commands(sub)
    _add_train_commands(sub)
    _add_config_commands(sub)
    _add_bundle_commands(sub)
    _add_evaluate_commands(sub)
    _add_cv_commands(sub)
    return parser


# What rerunning an interrupted command does (outputs are renamed into place only when complete, so an
# interrupted command never leaves a half-written one).
RERUN = {
    "train": "rerunning the same command resumes from the last checkpoint in train.output_dir (train.resume)",
    "cv": "rerunning the same command keeps the finished folds and resumes the one in progress from its last "
          "checkpoint",
    "predict": "with --resume (on by default under /kaggle/working), rerunning the same command reuses the "
               "finished chunks; without it, rerunning starts again",
}
RERUN_AFRESH = "nothing half-written was left; rerunning the same command starts again"


def main(argv: list[str] | None = None) -> int:
    from .logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    try:
        return args.handler(args)
    except WsdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nwsdm {args.command}: interrupted; {RERUN.get(args.command, RERUN_AFRESH)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (| head): point stdout at /dev/null so the exit flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
