"""The offline Kaggle rehearsal: the workflow a competitor runs, one Kaggle notebook session at a time.

For every declared Kaggle image (:mod:`.images`), built as a real venv (:mod:`.image_venv`), and each
session in its own network-less mount namespace (:mod:`.sandbox`)::

    (a) install        the wheelhouse's install.py on the bare image (and, on images it does not fit,
                       the wheelhouse of another Python: refused before pip runs; on the 2025 image, the
                       wheelhouse layout before the fix: ResolutionImpossible)
    (b) train-1        train_gemma.ipynb on a tiny model dataset, stopped by train.max_hours with a checkpoint
    (c) train-2        a new session (/kaggle/working empty) with (b)'s output attached: resumes, writes the run
    (d) bundle         `wsdm bundle adapter` and `wsdm bundle kernel` on the build machine (and the refusal
                       when the base model is not attached)
    (e) commit         the bundled inference.ipynb, a commit run on the public test rows
    (f) rerun          the same notebook with KAGGLE_IS_COMPETITION_RERUN on a 25k-row hidden test under a
                       deadline that binds
    (g) lmsys-train    on the last image: train_gemma.ipynb on LMSYS's train.csv (JSON cells, ties as a
                       third class), then its adapter and a `--competition lmsys` kernel bundled
    (h) lmsys-commit   that kernel's commit run: three probabilities per id, under LMSYS's default 540 min

Each submission is checked against the competition's sample_submission (columns, ids, values); each
session prints one line of its report (time, versions, files written, checks), and the whole report is
saved as ``OUT/rehearsal.json``. ``python -m wsdm_helpers.kaggle.rehearsal --help``; ``make
kaggle-rehearsal`` runs every image.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import WsdmError
from ..submission import check_against_sample
from .competitions import COMPETITIONS
from .image_venv import image_venv
from .images import IMAGES, NotebookImage, get_image
from .sandbox import SessionResult, require_root_namespaces, run_session
from .wheels import DATASET as WHEELHOUSE
from .wheels import build_wheelhouse


@dataclass(frozen=True)
class Track:
    """One competition's datasets in the rehearsal: its data folder's slug and the run datasets bundled for it."""
    task: str
    competition: str
    adapter: str
    baseline: str
    train_file: str


WSDM = Track("wsdm", COMPETITIONS["wsdm"].slug, "wsdm-adapter", "wsdm-baseline", "train.parquet")
LMSYS = Track("lmsys", COMPETITIONS["lmsys"].slug, "lmsys-adapter", "lmsys-baseline", "train.csv")
COMPETITION = WSDM.competition
MODEL_DATASET = "tiny-gemma"
TRAIN_OUTPUT = "wsdm-train-session-1"
REPORTED = ("wsdm-helpers", "torch", "transformers", "tokenizers", "accelerate", "peft", "huggingface-hub",
            "numpy", "pandas")
REPO = Path(__file__).resolve().parents[2]


class RehearsalFailure(WsdmError):
    """A session of the rehearsal did not do what Kaggle needs."""


def _wsdm(*args: str) -> subprocess.CompletedProcess:
    """The build machine's own ``wsdm`` (this interpreter), as a user runs it before uploading."""
    return subprocess.run([sys.executable, "-m", "wsdm_helpers", *args], capture_output=True, text=True)


def _expect(result: SessionResult, ok: bool, check: str) -> None:
    result.checks.append(("ok: " if ok else "FAILED: ") + check)
    if not ok:
        raise RehearsalFailure(f"{result.image} {result.name}: {check} (log: {result.log})")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def _log_has(result: SessionResult, text: str) -> bool:
    return text in result.log.read_text(errors="replace")


def check_submission(path: Path, sample: Path) -> str:
    """The submission against the competition's sample_submission, as Kaggle checks it."""
    try:
        checked = check_against_sample(path, sample)
    except WsdmError as exc:
        raise RehearsalFailure(str(exc)) from None
    return f"ok: {len(checked)} rows match {sample.name} (columns, ids, values)"


class KaggleRehearsal:
    """The datasets, trees and sessions of one image."""

    def __init__(self, image: NotebookImage, venv: Path, out: Path, wheelhouses: dict[str, Path]):
        self.image, self.venv, self.out, self.wheelhouses = image, venv, out, wheelhouses
        self.logs = out / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)  # this rehearsal's sessions only
        self.results: list[SessionResult] = []

    # ---- the build machine's side: datasets --------------------------------------------------------
    def _tree(self, name: str, datasets: dict[str, Path]) -> Path:
        tree = self.out / "trees" / name
        if tree.exists():
            shutil.rmtree(tree)
        for slug, source in datasets.items():  # hard links: the input is mounted read-only in the session
            shutil.copytree(source, tree / "input" / slug, symlinks=True, copy_function=_link_or_copy)
        return tree

    def _session(self, name: str, tree: Path, argv: list[str], **env: str) -> SessionResult:
        result = run_session(name, self.image.name, self.venv, tree, argv, logs=self.logs,
                             env={"KAGGLE_KERNEL_RUN_TYPE": "Interactive", "KAGGLE_URL_BASE": "https://www.kaggle.com",
                                  **env})
        self.results.append(result)
        return result

    def _papermill(self, notebook: Path, name: str, parameters: dict) -> list[str]:
        return ["papermill", str(notebook), str(self.logs / f"{name}.ipynb"), "--cwd", "/kaggle/working",
                "-y", json.dumps(parameters), "--log-output", "--no-progress-bar"]

    # ---- the sessions -----------------------------------------------------------------------------
    def _before_fix(self) -> Path:
        """The wheelhouse as it was before issue 26: wsdm_helpers, peft and bitsandbytes pinned, nothing else."""
        folder = self.out / "datasets" / "wheelhouse-before-fix"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        pins = []
        for prefix in ("bitsandbytes-", "peft-", "wsdm_helpers-"):
            wheel = next(self.wheelhouses[self.image.name].glob(f"{prefix}*.whl"))
            shutil.copy2(wheel, folder / wheel.name)
            pins.append(f"{prefix[:-1]}=={wheel.name.split('-')[1]}")
        (folder / "requirements.txt").write_text("\n".join(pins) + "\n")
        return folder

    def install(self, datasets: dict[str, Path]) -> None:
        tree = self._tree("install", {WHEELHOUSE: self.wheelhouses[self.image.name],
                                      f"{WHEELHOUSE}-before-fix": self._before_fix()} | {
            f"{WHEELHOUSE}-{name}": path for name, path in self.wheelhouses.items() if name != self.image.name})
        old = f"/kaggle/input/{WHEELHOUSE}-before-fix"
        before = self._session("a-install-before-fix", tree, ["python", "-m", "pip", "install", "--no-index",
                                                               "--find-links", old, "-r", f"{old}/requirements.txt"])
        impossible = before.returncode != 0 and _log_has(before, "ResolutionImpossible")
        before.checks.append(f"the wheelhouse layout before the fix: rc {before.returncode}"
                             + (", ResolutionImpossible" if impossible else ""))
        if self.image.packages["transformers"].startswith("4."):
            _expect(before, impossible, "before the fix, the old image's install ends in ResolutionImpossible")
        smoke = "import wsdm_helpers, peft, transformers; print('import ok', wsdm_helpers.__version__)"
        result = self._session("a-install", tree, ["sh", "-c", f"python /kaggle/input/{WHEELHOUSE}/install.py && "
                                                               f"python -c \"{smoke}\" && wsdm --help > /dev/null"])
        _expect(result, result.returncode == 0, "install.py installs the wheelhouse offline, wsdm imports")
        for name, image in ((n, get_image(n)) for n in self.wheelhouses if n != self.image.name):
            if image.python == self.image.python:
                continue
            other = self._session(f"a-install-{name}-wheelhouse", tree, ["python", f"/kaggle/input/{WHEELHOUSE}-{name}/install.py"])
            _expect(other, other.returncode == 2 and _log_has(other, f"built for Python {image.python}")
                    and not _log_has(other, "Processing "), f"the {name} wheelhouse is refused before pip runs")

    def train(self, datasets: dict[str, Path], notebook: Path) -> Path:
        base = {"config": "tiny-test", "train_path": f"/kaggle/input/{COMPETITION}/{WSDM.train_file}",
                "model_source": f"/kaggle/input/{MODEL_DATASET}", "max_steps": 60}
        tree = self._tree("train", {k: datasets[k] for k in (WHEELHOUSE, COMPETITION, MODEL_DATASET)})
        first = self._session("b-train-1", tree, self._papermill(notebook, "b-train-1", {
            **base, "overrides": {"train.max_hours": 0.004}}),
            KAGGLE_KERNEL_RUN_TYPE="Batch")
        checkpoints = sorted(first.output.rglob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        _expect(first, first.returncode == 0 and bool(checkpoints), "train.max_hours stops with a checkpoint")
        step = int(checkpoints[-1].name.split("-")[1])
        tree = self._tree("train", {k: datasets[k] for k in (WHEELHOUSE, COMPETITION, MODEL_DATASET)}
                          | {TRAIN_OUTPUT: first.output})
        second = self._session("c-train-2", tree, self._papermill(notebook, "c-train-2", {
            **base, "resume_from": f"/kaggle/input/{TRAIN_OUTPUT}"}),
            KAGGLE_KERNEL_RUN_TYPE="Batch")
        runs = [p.parent for p in second.output.rglob("config.yaml") if (p.parent / "adapter").is_dir()]
        _expect(second, second.returncode == 0 and len(runs) == 1, "the next session writes the run folder")
        run = runs[0]
        _expect(second, _log_has(second, f"step {step}"), f"it resumed at step {step}, the attached checkpoint's")
        return run

    def bundle(self, run: Path, track: Track, **parameters: str) -> tuple[Path, Path]:
        """On the build machine: the adapter dataset and the scoring kernel for ``track``'s competition (for
        WSDM, refused first while the base model is not attached); ``parameters`` go to the notebook (-p)."""
        started = time.monotonic()
        adapter = self.out / "datasets" / track.adapter
        done = _wsdm("bundle", "adapter", str(run), "--out", str(adapter), "--replace", "--username", "rehearsal",
                     "--base-model", f"/kaggle/input/{MODEL_DATASET}")
        if done.returncode != 0:
            raise RehearsalFailure(f"wsdm bundle adapter failed:\n{done.stdout}{done.stderr}")
        kernel = self.out / f"kernel-{track.task}"
        runs = json.dumps([f"/kaggle/input/{track.adapter}", f"/kaggle/input/{track.baseline}"])
        common = ["bundle", "kernel", "--notebook", str(REPO / "notebooks" / "inference.ipynb"), "--username",
                  "rehearsal", "--competition", track.task, "--adapter-dir", str(adapter), "--replace",
                  "--dataset", track.baseline, "-p", "run_dirs", runs, "-p", "weights", "[1.0, 0.0]",
                  *(arg for name, value in parameters.items() for arg in ("-p", name, value))]
        checks = []
        if track is WSDM:
            refused = _wsdm(*common, "--out", str(self.out / "kernel-refused"), "--dataset", WHEELHOUSE,
                            "--dataset", track.adapter)
            if refused.returncode != 2 or MODEL_DATASET not in refused.stderr:
                raise RehearsalFailure(f"bundle kernel without the base model attached was not refused:\n{refused.stderr}")
            checks.append("ok: bundle kernel refused while the base model was not attached")
        done = _wsdm(*common, "--out", str(kernel), "--dataset", WHEELHOUSE, "--dataset", track.adapter,
                     "--dataset", MODEL_DATASET)
        if done.returncode != 0:
            raise RehearsalFailure(f"wsdm bundle kernel failed:\n{done.stdout}{done.stderr}")
        metadata = json.loads((kernel / "kernel-metadata.json").read_text())
        files = sorted(p.relative_to(self.out).as_posix() for p in (*adapter.rglob("*"), *kernel.rglob("*")) if p.is_file())
        checks.append(f"ok: wsdm bundle adapter and bundle kernel (competition {metadata.get('competition_sources')}, "
                      f"machine_shape {metadata.get('machine_shape')})")
        self.results.append(SessionResult(f"d-bundle-{track.task} (build machine)", self.image.name,
                                          time.monotonic() - started, 0, self.logs, kernel, files, checks=checks))
        return adapter, kernel / "inference.ipynb"

    def submit(self, datasets: dict[str, Path], adapter: Path, notebook: Path, hidden: Path) -> None:
        inputs = {k: datasets[k] for k in (WHEELHOUSE, COMPETITION, MODEL_DATASET, WSDM.baseline)} | {
            WSDM.adapter: adapter}
        tree = self._tree("inference", inputs)
        commit = self._session("e-commit", tree, self._papermill(notebook, "e-commit", {}),
                               KAGGLE_KERNEL_RUN_TYPE="Batch")
        _expect(commit, commit.returncode == 0, "the commit run succeeds")
        commit.checks.append(check_submission(commit.output / "submission.csv",
                                              datasets[COMPETITION] / "sample_submission.csv"))
        tree = self._tree("inference", inputs | {COMPETITION: hidden})
        rerun = self._session("f-rerun", tree, self._papermill(notebook, "f-rerun", {}),
                              KAGGLE_KERNEL_RUN_TYPE="Batch", KAGGLE_IS_COMPETITION_RERUN="True")
        _expect(rerun, rerun.returncode == 0, "the competition rerun succeeds")
        rerun.checks.append(check_submission(rerun.output / "submission.csv", hidden / "sample_submission.csv"))
        report = json.loads((rerun.output / "submission_report.json").read_text())
        used = report["elapsed_seconds"] / report["deadline_seconds"]
        llm = next(r for r in report["runs"] if r["kind"] == "llm")
        binds = llm["status"] != "done" or llm["swapped_rows"] < report["rows"]
        _expect(rerun, used <= 1.0, f"written after {report['elapsed_seconds']:.1f} s, {used:.3f} of the "
                                    f"{report['deadline_seconds']:.0f} s deadline; it {'binds' if binds else 'does not bind'}: "
                                    f"the LLM run scored {llm['rows_predicted']} of {report['rows']} rows and swapped "
                                    f"{llm['swapped_rows']}, the baseline filled {report['rows_from_fallback']}")

    def lmsys(self, datasets: dict[str, Path], notebook: Path) -> None:
        """LMSYS: a 3-class run trained on its train.csv, bundled with ``--competition lmsys``, its commit run."""
        tree = self._tree("lmsys-train", {k: datasets[k] for k in (WHEELHOUSE, LMSYS.competition, MODEL_DATASET)})
        train = self._session("g-lmsys-train", tree, self._papermill(notebook, "g-lmsys-train", {
            "config": "tiny-test", "train_path": f"/kaggle/input/{LMSYS.competition}/{LMSYS.train_file}",
            "model_source": f"/kaggle/input/{MODEL_DATASET}", "max_steps": 30,
            "overrides": {"data.ties": "keep", "model.num_labels": 3}}), KAGGLE_KERNEL_RUN_TYPE="Batch")
        runs = [p.parent for p in train.output.rglob("config.yaml") if (p.parent / "adapter").is_dir()]
        _expect(train, train.returncode == 0 and len(runs) == 1, "train_gemma.ipynb trains a 3-class run on train.csv")
        adapter, kernel = self.bundle(runs[0], LMSYS)
        tree = self._tree("lmsys-inference", {k: datasets[k] for k in (
            WHEELHOUSE, LMSYS.competition, MODEL_DATASET, LMSYS.baseline)} | {LMSYS.adapter: adapter})
        commit = self._session("h-lmsys-commit", tree, self._papermill(kernel, "h-lmsys-commit", {}),
                               KAGGLE_KERNEL_RUN_TYPE="Batch")
        _expect(commit, commit.returncode == 0, "the LMSYS commit run succeeds")
        _expect(commit, _log_has(commit, "submission deadline: 540 min budget"),
                "its deadline defaults to LMSYS's 540 min")
        commit.checks.append(check_submission(commit.output / "submission.csv",
                                              datasets[LMSYS.competition] / "sample_submission.csv"))
        report = json.loads((commit.output / "submission_report.json").read_text())
        llm = next(r for r in report["runs"] if r["kind"] == "llm")
        _expect(commit, llm["status"] == "done" and llm["rows_predicted"] == report["rows"],
                f"the 3-class LLM run scored all {report['rows']} rows")


class ColabRehearsal:
    """Colab: /content as the working folder, Drive (``/content/drive/MyDrive``) the only thing a runtime
    reset keeps, the package installed from a wheel file by the notebooks' ``wsdm_source`` parameter."""

    def __init__(self, image: NotebookImage, venv: Path, out: Path):
        self.image, self.venv, self.out = image, venv, out
        self.logs = out / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)
        self.content = out / "content"
        self.drive = self.content / "drive" / "MyDrive" / "wsdm"
        self.results: list[SessionResult] = []

    def upload(self, datasets: dict[str, Path], wheel: Path) -> None:
        if self.content.exists():
            shutil.rmtree(self.content)
        shutil.copytree(datasets[COMPETITION], self.drive / "data")
        shutil.copytree(datasets[MODEL_DATASET], self.drive / MODEL_DATASET)
        shutil.copy2(wheel, self.drive / wheel.name)
        self.wheel = f"/content/drive/MyDrive/wsdm/{wheel.name}"

    def reset_runtime(self) -> None:
        """A runtime reset: everything under /content is gone but Drive."""
        for child in self.content.iterdir():
            if child.name != "drive":
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _session(self, name: str, notebook: str, parameters: dict) -> SessionResult:
        self.reset_runtime()
        argv = ["papermill", str(REPO / "notebooks" / f"{notebook}.ipynb"), str(self.logs / f"{name}.ipynb"),
                "--cwd", "/content", "-y", json.dumps({"wsdm_source": self.wheel, **parameters}), "--log-output",
                "--no-progress-bar"]
        result = run_session(name, self.image.name, self.venv, self.content, argv, logs=self.logs,
                             mount_at="/content", workdir="/content", working=None,
                             env={"COLAB_RELEASE_TAG": "release-colab-external-images_20260819"})
        self.results.append(result)
        return result

    def run(self) -> Path:
        drive = "/content/drive/MyDrive/wsdm"
        base = {"config": "tiny-test", "train_path": f"{drive}/data/train.parquet",
                "model_source": f"{drive}/{MODEL_DATASET}", "max_steps": 60, "output_dir": f"{drive}/runs/tiny"}
        first = self._session("colab-train-1", "train_gemma", {**base, "overrides": {"train.max_hours": 0.004}})
        checkpoints = sorted((self.drive / "runs").rglob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        _expect(first, first.returncode == 0 and bool(checkpoints), "stopped by max_hours with a checkpoint on Drive")
        step = int(checkpoints[-1].name.split("-")[1])
        second = self._session("colab-train-2", "train_gemma", base)
        run = self.drive / "runs" / "tiny" / "run"
        _expect(second, second.returncode == 0 and (run / "adapter").is_dir() and _log_has(second, f"step {step}"),
                f"after a runtime reset the same notebook resumes at step {step} from Drive and writes the run")
        infer = self._session("colab-inference", "inference", {
            "run_dirs": [f"{drive}/runs/tiny/run"], "test_path": f"{drive}/data/test.parquet",
            "output_dir": "/content/submission"})
        _expect(infer, infer.returncode == 0, "inference.ipynb writes the submission")
        infer.checks.append(check_submission(infer.output / "submission" / "submission.csv",
                                             self.drive / "data" / "sample_submission.csv"))
        done = _wsdm("bundle", "adapter", str(run), "--out", str(self.out / "adapter-for-kaggle"), "--replace",
                     "--username", "rehearsal", "--base-model", f"/kaggle/input/{MODEL_DATASET}")
        _expect(infer, done.returncode == 0, "the Drive run bundles as a Kaggle adapter dataset")
        return run


def prepare_datasets(out: Path, rerun_rows: int) -> tuple[dict[str, Path], Path]:
    """Both competitions' data in their layouts, the tiny model dataset, a feature baseline for each and the
    25k-row hidden test (WSDM layout)."""
    from ..demo_data import write_demo_dataset, write_hidden_test, write_lmsys_dataset
    from ..tiny import build_tiny_model_from_file

    datasets = out / "datasets"
    competition = datasets / COMPETITION
    if not (competition / "sample_submission.csv").is_file():
        write_demo_dataset(competition, n_train=400, n_test=48, seed=3)
        (competition / "test_labels.parquet").unlink()
    lmsys = datasets / LMSYS.competition
    if not (lmsys / "sample_submission.csv").is_file():
        write_lmsys_dataset(lmsys, n_train=400, n_test=48, seed=4)
    model = datasets / MODEL_DATASET
    if not (model / "config.json").is_file():
        build_tiny_model_from_file(competition / "train.parquet", model, family="gemma2")
    for track, data in ((WSDM, competition), (LMSYS, lmsys)):
        baseline = datasets / track.baseline
        if not (baseline / "baseline.json").is_file():
            done = _wsdm("baseline", "--train", str(data / track.train_file), "--run-dir", str(baseline))
            if done.returncode != 0:
                raise RehearsalFailure(f"wsdm baseline failed:\n{done.stderr}")
    hidden = out / "hidden" / COMPETITION
    if not (hidden / "sample_submission.csv").is_file():
        hidden.mkdir(parents=True, exist_ok=True)
        shutil.copy2(competition / "train.parquet", hidden / "train.parquet")
        write_hidden_test(hidden, rerun_rows)
    return {COMPETITION: competition, LMSYS.competition: lmsys, MODEL_DATASET: model,
            **{t.baseline: datasets / t.baseline for t in (WSDM, LMSYS)}}, hidden


def _print_report(results: list[SessionResult]) -> None:
    for r in results:
        versions = ", ".join(f"{n} {r.versions.get(n, '-')}" for n in REPORTED)
        print(f"[{r.image}] {r.name}: rc {r.returncode}, {r.seconds:.0f} s; {versions}")
        print(f"    files: {len(r.files)} ({', '.join(r.files[:6])}{', ...' if len(r.files) > 6 else ''})")
        for check in r.checks:
            print(f"    {check}")


def rehearse(images: list[str], out: Path, rerun_rows: int = 25_000, deadline_minutes: float = 2.0,
             colab: str | None = None) -> list[SessionResult]:
    require_root_namespaces()
    out = out.resolve()  # the sessions run in /kaggle/working: every path handed to them is absolute
    out.mkdir(parents=True, exist_ok=True)
    datasets, hidden = prepare_datasets(out, rerun_rows)
    wheelhouses = {name: out / "wheelhouses" / name for name in images}
    with ThreadPoolExecutor() as pool:  # downloads and pip: the slow part on a fresh machine, done side by side
        venvs = {name: pool.submit(image_venv, get_image(name)) for name in [*images, *([colab] if colab else [])]}
        built = [pool.submit(build_wheelhouse, folder, image=name, username="rehearsal", replace=True)
                 for name, folder in wheelhouses.items()]
        venvs = {name: future.result() for name, future in venvs.items()}
        for future in built:
            future.result()
    results = []
    for name in images:
        rehearsal = KaggleRehearsal(get_image(name), venvs[name], out / name, wheelhouses)
        try:
            data = {**datasets, WHEELHOUSE: wheelhouses[name]}
            rehearsal.install(data)
            run = rehearsal.train(data, REPO / "notebooks" / "train_gemma.ipynb")
            adapter, notebook = rehearsal.bundle(run, WSDM, time_budget_minutes=str(deadline_minutes),
                                                 safety_minutes="0.1")
            rehearsal.submit(data, adapter, notebook, hidden)
            if name == images[-1]:  # LMSYS on one image: its sessions differ from WSDM's in the data only
                rehearsal.lmsys(data, REPO / "notebooks" / "train_gemma.ipynb")
        finally:
            results += rehearsal.results
            _print_report(rehearsal.results)
    if colab:
        rehearsal = ColabRehearsal(get_image(colab), venvs[colab], out / colab)
        try:
            rehearsal.upload(datasets, next((wheelhouses[images[0]]).glob("wsdm_helpers-*.whl")))
            rehearsal.run()
        finally:
            results += rehearsal.results
            _print_report(rehearsal.results)
    (out / "rehearsal.json").write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", choices=[n for n, i in IMAGES.items() if i.place == "kaggle"],
                        help="declared Kaggle image (repeatable; default: every one)")
    parser.add_argument("--out", default="runs/rehearsal", help="datasets, trees, logs and the report")
    parser.add_argument("--rerun-rows", type=int, default=25_000, help="rows of the hidden test of the rerun")
    parser.add_argument("--deadline-minutes", type=float, default=2.0, help="the rerun's time budget (it must bind)")
    colab = [n for n, i in IMAGES.items() if i.place == "colab"]
    parser.add_argument("--colab", choices=[*colab, "none"], default=colab[-1], help="declared Colab image to play")
    args = parser.parse_args(argv)
    images = args.image or [n for n, i in IMAGES.items() if i.place == "kaggle"]
    try:
        rehearse(images, Path(args.out), args.rerun_rows, args.deadline_minutes,
                 None if args.colab == "none" else args.colab)
    except WsdmError as exc:
        print(f"rehearsal failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
