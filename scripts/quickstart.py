"""Quickstart: DeGLA and NegCLIP vs plain CLIP fine-tuning on the synthetic ShapeCrepe benchmark, on CPU.

Stages (each skipped when its output already exists, so an interrupted run resumes):
  1. generate ShapeCrepe data (training rows with rule-made hard negatives, SugarCrepe-format test sets) and the
     bag-of-words retrieval set ``data/bow_retrieval/coco_karpathy_test.json``: the iid test images with their
     caption's words shuffled (pretraining's caption style), in the COCO Karpathy test format;
  2. pretrain a tiny CLIP on bag-of-words captions: it learns which colours/shapes are present, not which
     object has which (the non-binding CLIP that DeGLA-style fine-tuning starts from);
  3. fine-tune it three times through ``training.main`` with identical data, seeds and steps: ``--loss clip``,
     ``--loss negclip`` (one rule-made swapped-attribute negative caption per image, NegCLIP's recipe) and
     ``--loss degla`` (the same negatives plus IGC, TGC and self-distillation to an EMA teacher).
  Every training run validates its final checkpoint itself (``--val-benchmark``): both ShapeCrepe test splits
  (iid, held-out colour-shape combinations) through the evaluation suite with the official SugarCrepe rule
  (strict pos > neg), and general ability: retrieval with bag-of-words captions, the skill pretraining taught
  (the stand-in for zero-shot ability that hard-negative fine-tuning erodes and DeGLA's self-distillation is
  meant to keep). Its records land in ``logs/<run>/benchmarks/epoch_<N>.json``;
  4. the table, ``results.json`` and ``results.png`` are read from those records (no separate evaluation pass),
     and the time each stage took is printed.
"""
import time

STARTED = time.time()  # before the heavy imports: the report counts them as a stage

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import signal  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from open_clip_align.data.synthetic import caption_words, generate  # noqa: E402
from open_clip_align.eval import sugarcrepe  # noqa: E402
from open_clip_align.eval.report import read_results  # noqa: E402
from open_clip_align.eval.sugarcrepe import SUBSETS  # noqa: E402

ARMS = ("pretrained", "clip", "negclip", "degla")
SPLITS = ("iid", "heldout")
GENERAL_SUBSETS = ("replace_obj", "replace_att")  # images whose paired scenes differ in their bag of words
BOW = "bow_retrieval"  # the bag-of-words retrieval set's folder under data/
BOW_KS = (1, 5)  # the recalls the report shows
# the quickstart's training runs were measured fastest on one torch thread per process: a tiny model's kernels are
# too small to split, and the data-loading worker gets the other core
THREADS = 1
PARALLEL = 3  # the three fine-tunes at once: with one thread each, a run alone keeps one of 2 cores busy
# run each training in a fork of this process (imports paid once) where fork is safe with torch: Linux
FORK = sys.platform.startswith("linux") and hasattr(os, "fork")


def _log(message: str) -> None:
    print(f"[quickstart {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _records_path(args, name: str, epochs: int) -> Path:
    return args.out / "logs" / name / "benchmarks" / f"epoch_{epochs}.json"


def _log_seconds(line: str):
    """Seconds since the epoch of an open_clip_train log line (``2026-01-02,03:04:05 | INFO | ...``), or None."""
    match = re.match(r"(\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d) \|", line)
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d,%H:%M:%S")) if match else None


def validation_seconds(log: Path):
    """How long the run's last validation took, from its ``out.log``: from the last training line to the
    ``Benchmarks epoch`` line (1-second resolution); None if the log does not show it."""
    last_train = done = None
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        if "Train Epoch:" in line:
            last_train = _log_seconds(line)
        elif "Benchmarks epoch" in line:
            done = _log_seconds(line)
    return done - last_train if last_train is not None and done is not None else None


def launch(argv: list, cwd: Path, threads: int, fork: bool):
    """Start ``python -m training.main *argv`` in ``cwd`` with ``threads`` torch threads; returns ``(lines, wait,
    pid)``: its output (stdout and stderr) line by line, a function giving its exit status, and its process id.

    ``fork`` (Linux): a child of this process, which has imported torch, open_clip and the plugin once, runs it, so
    no run pays those imports again (seconds each); otherwise a fresh interpreter."""
    if not fork:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
        proc = subprocess.Popen([sys.executable, "-m", "training.main", *argv], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc.stdout, proc.wait, proc.pid
    import torch
    import training.main as training_main

    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: its stdout and stderr go to the pipe, and it never returns into the quickstart
        status = 1
        try:
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # whatever sys.stdout was (e.g. a capture)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.chdir(cwd)
            os.environ.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
            torch.set_num_threads(threads)
            sys.argv = ["training.main", *argv]
            training_main.cli()
            status = 0
        except SystemExit as done:
            status = done.code if isinstance(done.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write)
    return os.fdopen(read, errors="replace"), lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), pid


class Run:
    """One ``training.main`` run of the quickstart, started (``launch``) and streamed line by line."""

    def __init__(self, args, arm: str, name: str, epochs: int):
        self.arm, self.name, self.epochs = arm, name, epochs
        self.dir = args.out / "logs" / name
        self.ckpt = self.dir / "checkpoints" / f"epoch_{epochs}.pt"
        self.records = _records_path(args, name, epochs)
        self.tail, self.partial, self.seconds = [], b"", None
        self.lines = self.wait = self.pid = None
        self.started = time.time()

    def done(self) -> bool:
        return self.ckpt.is_file() and self.records.is_file()

    def feed(self, chunk: bytes) -> None:
        """Log the progress lines in ``chunk`` (bytes read from the run's output; b"" at its end)."""
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop() if chunk else b""
        for raw in lines + ([self.partial] if not chunk and self.partial else []):
            line = raw.decode(errors="replace")
            self.tail = (self.tail + [line + "\n"])[-40:]
            match = re.search(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].*?Contrastive_loss: ([0-9.]+)", line)
            if match:
                epoch, _, _, pct, loss = match.groups()
                _log(f"{self.name}: epoch {int(epoch) + 1}/{self.epochs} {pct:>3}%  loss {float(loss):.3f}")
            elif "Benchmarks epoch" in line:
                _log(f"{self.name}: validated")

    def finish(self) -> None:
        status = self.wait()
        self.lines.close()
        self.seconds = time.time() - self.started
        if status != 0 or not self.done():
            sys.stderr.write("".join(self.tail))
            raise SystemExit(f"quickstart: training run {self.name!r} failed (full log in {self.dir / 'out.log'})")


def _start(args, arm: str, name: str, model: str, epochs: int, batch_size: int, cwd: Path, flags: list) -> Run:
    """Start ``training.main`` (validated after its last epoch, ``--val-benchmark``) unless its final checkpoint and
    benchmark records exist (then the ``Run`` has no ``lines``)."""
    run = Run(args, arm, name, epochs)
    if run.done():
        _log(f"{name}: found {run.ckpt}, skipping")
        return run
    if run.dir.exists():  # an interrupted run (or one without its benchmark records): start it again cleanly
        shutil.rmtree(run.dir)
    data = args.out / "data"
    argv = ["--logs", str(args.out / "logs"), "--name", name, "--model", model, "--device", "cpu",
            "--precision", "fp32", "--workers", str(args.workers), "--batch-size", str(batch_size),
            "--epochs", str(epochs), "--seed", str(args.seed), "--warmup", "20", "--wd", "0.1",
            "--log-every-n-steps", "10", "--save-frequency", "0",
            "--val-benchmark", f"synthetic={data},retrieval={data / BOW}", "--val-frequency", str(epochs), *flags]
    _log(f"{name}: training.main " + " ".join(argv))
    run.lines, run.wait, run.pid = launch(argv, cwd, args.threads, fork=FORK)
    return run


def run_all(starters: list, parallel: int) -> list:
    """Run the training runs that ``starters`` (functions returning ``_start``'s ``Run``) begin, at most
    ``parallel`` at a time, streaming every run's progress; returns the finished ``Run``s in order. Every fork
    happens here, in the one thread of this process (the outputs are read with a selector, not threads)."""
    pending, runs, live = list(starters), [], selectors.DefaultSelector()
    try:
        while pending or live.get_map():
            while pending and len(live.get_map()) < parallel:
                run = pending.pop(0)()
                runs.append(run)
                if run.lines is not None:
                    live.register(run.lines.fileno(), selectors.EVENT_READ, run)
            for key, _ in (live.select() if live.get_map() else []):  # every run left may have been skipped
                run, chunk = key.data, os.read(key.fd, 1 << 16)
                run.feed(chunk)
                if not chunk:
                    live.unregister(key.fd)
                    run.finish()
    except BaseException:  # a run failed, or Ctrl-C: stop the others rather than leave them training unwatched
        for key in list(live.get_map().values()):
            os.kill(key.data.pid, signal.SIGTERM)
            key.data.wait()
        raise
    return runs


def _bag_of_words_set(root: Path, seed: int):
    """iid test images with their caption's words in a seeded random order (pretraining's caption style)."""
    items = sugarcrepe.load(root, GENERAL_SUBSETS)
    images = list(dict.fromkeys(it.images[0] for it in items))
    first_caption = {}
    for it in items:
        first_caption.setdefault(it.images[0], it.captions[0])
    captions = []
    for i, image in enumerate(images):
        words = caption_words(first_caption[image])
        random.Random(f"{seed}/{i}").shuffle(words)
        captions.append([" ".join(words)])
    return images, captions


def write_bag_of_words_set(data: Path, seed: int) -> Path:
    """``data/bow_retrieval/coco_karpathy_test.json`` (the retrieval benchmark's COCO Karpathy test format) from
    ``_bag_of_words_set``: one entry per image, ``{"image": "../sugarcrepe/iid/val2017/<file>", "caption":
    [<shuffled words>]}``, written to a temporary file and renamed."""
    images, captions = _bag_of_words_set(data / "sugarcrepe" / "iid", seed)
    entries = [{"image": f"../sugarcrepe/iid/val2017/{Path(ref.path).name}", "caption": caps}
               for ref, caps in zip(images, captions)]
    path = data / BOW / "coco_karpathy_test.json"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, path)
    return path


def _int_keys(recalls: dict) -> dict:
    return {int(k): v for k, v in recalls.items()}


def read_arm(records_path: Path) -> dict:
    """``{split: SugarCrepe metrics, "general": {"bag_of_words_retrieval": recalls}}`` from a run's validation
    records (the model's, not its EMA teacher's ``teacher/`` ones)."""
    records = {r["dataset"]: r["metrics"] for r in read_results(records_path)}
    missing = [d for d in [f"shapecrepe/{s}/sugar_crepe" for s in SPLITS] + ["mscoco_captions"] if d not in records]
    if missing:
        raise SystemExit(f"quickstart: {records_path} lacks the records {', '.join(missing)}")
    arm = {split: records[f"shapecrepe/{split}/sugar_crepe"] for split in SPLITS}
    retrieval = records["mscoco_captions"]
    bow = {d: {k: v for k, v in _int_keys(retrieval[d]).items() if k in BOW_KS}
           for d in ("image_to_text", "text_to_image")}
    bow.update(n_images=retrieval["n_images"], n_captions=retrieval["n_captions"],
               mean_r1=(bow["image_to_text"][1] + bow["text_to_image"][1]) / 2)
    arm["general"] = {"bag_of_words_retrieval": bow}
    return arm


def _table(results: dict) -> str:
    header = f"{'split':<9}{'subset':<13}" + "".join(f"{arm:>12}" for arm in ARMS)
    lines = [header, "-" * len(header)]
    for split in SPLITS:
        for subset in SUBSETS:
            lines.append(f"{split:<9}{subset:<13}" + "".join(
                f"{results[arm][split]['subsets'][subset]['acc']:>12.1f}" for arm in ARMS))
        lines.append(f"{split:<9}{'micro':<13}" + "".join(f"{results[arm][split]['micro']:>12.1f}" for arm in ARMS))
        lines.append("")
    for label, direction, k in (("BoW i->t R@1", "image_to_text", 1), ("BoW t->i R@1", "text_to_image", 1),
                                ("BoW i->t R@5", "image_to_text", 5), ("BoW t->i R@5", "text_to_image", 5)):
        lines.append(f"{'general':<9}{label:<13}" + "".join(
            f"{results[arm]['general']['bag_of_words_retrieval'][direction][k]:>12.1f}" for arm in ARMS))
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS) + 1, figsize=(16, 4.2), sharey=True,
                             gridspec_kw={"width_ratios": [len(SUBSETS)] * len(SPLITS) + [2]})
    width = 0.8 / len(ARMS)
    offset = (len(ARMS) - 1) / 2
    for ax, split in zip(axes, SPLITS):
        for i, arm in enumerate(ARMS):
            values = [results[arm][split]["subsets"][s]["acc"] for s in SUBSETS]
            ax.bar([x + (i - offset) * width for x in range(len(SUBSETS))], values, width, label=arm)
        ax.axhline(50, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(SUBSETS)), SUBSETS, rotation=30)
        ax.set_title(f"ShapeCrepe {split} split (strict pos > neg)")
        ax.set_ylim(0, 100)
    general = axes[-1]
    for i, arm in enumerate(ARMS):
        bow = results[arm]["general"]["bag_of_words_retrieval"]
        general.bar([x + (i - offset) * width for x in range(2)], [bow["image_to_text"][1], bow["text_to_image"][1]],
                    width)
    general.set_xticks(range(2), ["image->text", "text->image"], rotation=30)
    general.set_title("general: BoW retrieval R@1")
    axes[0].set_ylabel("accuracy / recall (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(ARMS), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def stage_table(stages: list) -> str:
    """The time per stage: ``stages`` = [(name, seconds, note)], with the total."""
    lines = [f"{'stage':<28}{'seconds':>9}{'minutes':>9}", "-" * 46]
    for name, seconds, note in stages:
        lines.append(f"{name:<28}{seconds:>9.1f}{seconds / 60:>9.2f}" + (f"   {note}" if note else ""))
    total = sum(seconds for _, seconds, _ in stages)
    lines += ["-" * 46, f"{'total':<28}{total:>9.1f}{total / 60:>9.2f}"]
    return "\n".join(lines)


def _setup_seconds():
    """Seconds from ``quickstart.sh``'s start (``OCA_QUICKSTART_T0``, set before the environment set-up) to this
    script's start: the venv check or install; None when run directly."""
    try:
        return STARTED - float(os.environ["OCA_QUICKSTART_T0"])
    except (KeyError, ValueError):
        return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart", help="output directory")
    parser.add_argument("--model", default="shapes-tiny-ViT", help="model of the pretrain, clip and negclip arms")
    parser.add_argument("--degla-model", default="degla-shapes-tiny-ViT",
                        help="the same architecture with an EMA teacher, for the degla arm")
    parser.add_argument("--degla-distill-weight", type=float, default=0.08,
                        help="λ_D; the paper's 0.005 at global batch 256 is 0.08 at the fine-tuning batch of 16 "
                             "(the summed distill term grows with the batch)")
    parser.add_argument("--preset", default="default", choices=("default", "ci"), help="ShapeCrepe size preset")
    parser.add_argument("--train-size", type=int, default=None,
                        help="override the preset's training (and pretraining) rows")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="epochs of bag-of-words pretraining")
    parser.add_argument("--pretrain-batch-size", type=int, default=128)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-epochs", type=int, default=1, help="epochs of each fine-tuning arm")
    parser.add_argument("--finetune-batch-size", type=int, default=16,
                        help="small batches leave plain CLIP few in-batch binding contrasts, as at real scale")
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes per training run")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads of each training run (OMP_NUM_THREADS; default %(default)s)")
    parser.add_argument("--parallel", type=int, default=PARALLEL,
                        help="fine-tunes run at once (default %(default)s: all three; each uses --threads torch "
                             "threads, so one run alone leaves a core idle); results do not depend on it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag in ("threads", "parallel", "workers"):
        if getattr(args, flag) < (0 if flag == "workers" else 1):
            parser.error(f"--{flag} must be at least {0 if flag == 'workers' else 1}, got {getattr(args, flag)}")
    args.out = args.out.resolve()
    if FORK:  # the training runs are forks of this process: their code is imported once, here
        import training.main  # noqa: F401 (imported for its side effect: loaded once, before the forks)
    setup = _setup_seconds()
    stages = ([("set-up (venv, install)", setup, "")] if setup is not None else [])
    stages.append(("python start-up, imports", time.time() - STARTED, ""))

    def stage(name: str, start: float, note: str = "") -> None:
        stages.append((name, time.time() - start, note))

    start = time.time()
    data = args.out / "data"
    if (data / "manifest.json").is_file():
        _log(f"data: found {data}, skipping generation")
    else:
        _log("data: generating ShapeCrepe")
        generate(data, preset=args.preset, seed=args.seed, overwrite=data.exists(), train_size=args.train_size,
                 pretrain_size=args.train_size, num_negatives=1, train_neg_types=("swap_att",),
                 progress=sys.stdout.isatty())
    if not (data / BOW / "coco_karpathy_test.json").is_file():
        write_bag_of_words_set(data, args.seed)
    stage("data generation", start)

    def pretrain() -> Run:
        return _start(args, "pretrained", "pretrain", args.model, args.pretrain_epochs, args.pretrain_batch_size,
                      data, ["--loss", "clip", "--dataset-type", "csv", "--train-data", "pretrain.csv",
                             "--csv-img-key", "filepath", "--csv-caption-key", "title", "--lr", str(args.pretrain_lr)])

    def finetune(loss: str) -> Run:
        model = args.degla_model if loss == "degla" else args.model
        extra = ["--degla-distill-weight", str(args.degla_distill_weight)] if loss == "degla" else []
        return _start(args, loss, f"finetune-{loss}", model, args.finetune_epochs, args.finetune_batch_size, data,
                      ["--loss", loss, "--pretrained", str(pretrain_run.ckpt), "--hardneg-format", "csv",
                       "--train-data", str(data / "train.csv"), "--num-hardneg", "1", "--lr", str(args.finetune_lr),
                       *extra])

    def note(run: Run) -> str:
        validation = validation_seconds(run.dir / "out.log") if run.seconds is not None else None
        took = f"{run.seconds:.0f} s" if run.seconds is not None else "found"
        return f"{run.name} {took}" + (f" (validation {validation:.0f} s)" if validation is not None else "")

    start = time.time()
    [pretrain_run] = run_all([pretrain], 1)
    stage("pretrain", start, note(pretrain_run))
    start = time.time()
    finetunes = run_all([lambda loss=loss: finetune(loss) for loss in ("degla", "clip", "negclip")], args.parallel)
    stage(f"fine-tunes ({min(args.parallel, 3)} at a time)", start, "; ".join(note(run) for run in finetunes))
    runs = {run.arm: (run.name, run.epochs) for run in [pretrain_run, *finetunes]}

    start = time.time()
    results = {arm: read_arm(_records_path(args, *runs[arm])) for arm in ARMS}
    table = _table(results)
    print("\n" + table)
    swaps = ("swap_obj", "swap_att")
    gaps = {f"{arm}_minus_clip": {split: {s: results[arm][split]["subsets"][s]["acc"]
                                         - results["clip"][split]["subsets"][s]["acc"] for s in swaps}
                                  for split in SPLITS} for arm in ("negclip", "degla")}
    general = {arm: results[arm]["general"]["bag_of_words_retrieval"]["mean_r1"] for arm in ARMS}
    _plot(results, args.out / "results.png")
    stage("report (table, chart)", start)
    summary = {"arms": results, "swap_gaps": gaps, "general_mean_r1": general,
               "config": {k: str(v) for k, v in vars(args).items()},
               "stages": [{"stage": name, "seconds": round(seconds, 1), "note": note}
                          for name, seconds, note in stages],
               "seconds": round(sum(seconds for _, seconds, _ in stages), 1)}
    tmp = args.out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "results.json")
    for name, per_split in gaps.items():
        for split, gap in per_split.items():
            _log(f"{name.replace('_minus_', ' - ')} on {split}: "
                 + ", ".join(f"{s} {v:+.1f} pt" for s, v in gap.items()))
    _log("general ability (BoW retrieval, mean R@1): " + ", ".join(f"{arm} {v:.1f}" for arm, v in general.items()))
    print("\n" + stage_table(stages))
    _log(f"done in {summary['seconds']:.0f} s: {args.out / 'results.json'}, {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
