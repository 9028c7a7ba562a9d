"""`mtasr train ...`: corpus, evaluation set, the two recipes, the default pair, and `mtasr evaluate`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

WORK_DIR = Path("artifacts/training")


def _train_settings(args: argparse.Namespace, defaults):
    """The recipe's TrainSettings (`defaults`: its schedule shape) with the command line's values."""
    import dataclasses

    def given(value, default):
        return default if value is None else value

    max_steps = given(args.max_steps, defaults.max_steps)
    return dataclasses.replace(
        defaults,
        max_steps=max_steps,
        batch_size=given(args.batch_size, defaults.batch_size),
        val_every_steps=given(args.val_every, defaults.val_every_steps),
        lr=given(args.lr, defaults.lr),
        warmup_steps=min(given(args.warmup, defaults.warmup_steps), max_steps),
        accelerator=args.accelerator,
        seed=given(args.seed, defaults.seed),
        threads=args.threads,
    )


def _add_train_options(p: argparse.ArgumentParser, defaults, of: str = "") -> None:
    """Options of one recipe; unset, each is the recipe's own (`defaults`: its TrainSettings, shown in the
    help, `of` naming whose they are when a command has several recipes)."""

    def default(value) -> str:
        return f"(default {value})" if not of else f"(default: the stage's own, {value} {of})"

    p.add_argument("--corpus", type=Path, default=WORK_DIR / "corpus", help="corpus folder (mtasr train corpus)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, the .nemo; re-run resumes")
    p.add_argument("--init-from", type=Path, help="fine-tune this .nemo instead of training from the small config")
    p.add_argument("--max-steps", type=int, help=f"optimizer steps {default(defaults.max_steps)}")
    p.add_argument("--batch-size", type=int, help=f"mixtures per step {default(defaults.batch_size)}")
    p.add_argument("--lr", type=float, help=f"peak learning rate {default(defaults.lr)}")
    p.add_argument("--warmup", type=int, help=f"warm-up steps {default(defaults.warmup_steps)}")
    p.add_argument(
        "--val-every", type=int, help=f"validate and checkpoint every N steps {default(defaults.val_every_steps)}"
    )
    p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"), help="default: a GPU when present")
    p.add_argument("--seed", type=int, help="seed of the draws and the shuffling (default: the stage's own)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: all cores; 1 per job when two jobs share the machine)",
    )


def _add_per_stage_option(p: argparse.ArgumentParser, flag: str, what: str, stages: dict, field: str) -> None:
    """A number each stage's recipe sets (`field`), overridden from the command line."""
    own = ", ".join(f"{name} {getattr(recipe, field):g}" for name, recipe in stages.items())
    p.add_argument(flag, type=float, help=f"{what} (0: none; default: the stage's own, {own})")


def _corpus(args: argparse.Namespace) -> int:
    from mtasr.training.corpus import CorpusSettings, build_corpus
    from mtasr.training.voices import missing_engines

    if missing := missing_engines():
        print(
            f"error: {', '.join(missing)} not installed (apt-get install flite festival festvox-kdlpc16k espeak-ng)",
            file=sys.stderr,
        )
        return 2
    settings = CorpusSettings(
        train_sentences=args.train_sentences,
        test_sentences=args.test_sentences,
        dev_sentences=args.dev_sentences,
        train_utterances_per_voice=args.train_per_voice,
        test_utterances_per_voice=args.test_per_voice,
        dev_utterances_per_voice=args.dev_per_voice,
        seed=args.seed,
    )
    print(build_corpus(args.out, settings))
    return 0


def _evalset(args: argparse.Namespace) -> int:
    from mtasr.training.evalset import SELECTION_SET, EvalSetSettings, build_evalset

    out = args.out or WORK_DIR / ("selection_set" if args.selection else "evalset")
    print(build_evalset(args.corpus, out, SELECTION_SET if args.selection else EvalSetSettings()))
    return 0


def _refuse_without_init_from(args: argparse.Namespace, from_scratch: tuple[str, ...]) -> int:
    """2 (with the error said) when `args.stage` fine-tunes a model and none was given; else 0."""
    if args.stage in from_scratch or args.init_from is not None:
        return 0
    print(f"error: --stage {args.stage} fine-tunes the stage before it: give --init-from", file=sys.stderr)
    return 2


def _asr(args: argparse.Namespace) -> int:
    from mtasr.training.asr import ASR_STAGES, AsrRecipe, train_asr

    if refused := _refuse_without_init_from(args, from_scratch=("single_speaker", "mixtures")):
        return refused
    recipe = ASR_STAGES[args.stage]
    if args.init_from is None and args.stage == "mixtures":
        recipe = AsrRecipe(train=recipe.train)  # from scratch: the serving latency only
    recipe = dataclasses.replace(recipe, train=_train_settings(args, recipe.train))
    if args.diarizer_mask_share is not None:
        recipe = dataclasses.replace(recipe, diarizer_masks=args.diarizer_mask_share)
    try:
        recipe.mask_settings(args.diarizer)
    except ValueError as missing:
        print(f"error: --stage {args.stage}: {missing} (--diarizer)", file=sys.stderr)
        return 2
    train_asr(args.corpus, args.out, recipe, args.init_from, diarizer=args.diarizer)
    return 0


def _diarizer(args: argparse.Namespace) -> int:
    from mtasr.training.diarizer import DIARIZER_STAGES, train_diarizer

    if refused := _refuse_without_init_from(args, from_scratch=("mixtures",)):
        return refused
    recipe = DIARIZER_STAGES[args.stage]
    recipe = dataclasses.replace(recipe, train=_train_settings(args, recipe.train))
    if args.voice_head_weight is not None:
        recipe = dataclasses.replace(recipe, voice_head_weight=args.voice_head_weight)
    train_diarizer(args.corpus, args.out, recipe, init_from=args.init_from)
    return 0


def _defaults(args: argparse.Namespace) -> int:
    from mtasr.training.defaults import DefaultsSettings, reproduce_defaults

    reproduce_defaults(
        args.work_dir,
        DefaultsSettings(asr_steps=args.asr_steps, diarizer_steps=args.diarizer_steps),
        install=args.install,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mtasr.training.evaluate import evaluate, quality_table

    result = evaluate(args.model_repository, args.evalset, args.out, jobs=args.jobs)
    print(quality_table(result), end="")
    return 0


def add_parsers(sub) -> None:
    """Register `train` (with its own subcommands) and `evaluate` on the top-level subparsers."""
    add_train_parser(sub)
    add_evaluate_parser(sub)


def add_train_parser(sub) -> None:
    """`train` and its steps."""
    from mtasr.training.asr import ASR_STAGES, ASR_TRAIN
    from mtasr.training.corpus import CorpusSettings
    from mtasr.training.diarizer import DIARIZER_STAGES, DIARIZER_TRAIN

    corpus_defaults = CorpusSettings()

    train = sub.add_parser(
        "train",
        help="train the models in NeMo on simulated conversations",
        description="Training in NeMo on simulated multi-speaker mixtures of flite/festival/espeak-ng voices.",
    )
    steps = train.add_subparsers(dest="step", required=True)

    corpus = steps.add_parser("corpus", help="synthesise the single-speaker corpus (NeMo manifests)")
    corpus.add_argument(
        "--out", type=Path, default=WORK_DIR / "corpus", help="corpus folder to write (default %(default)s)"
    )
    corpus.add_argument(
        "--train-sentences", type=int, default=corpus_defaults.train_sentences, help="training sentences"
    )
    corpus.add_argument(
        "--test-sentences", type=int, default=corpus_defaults.test_sentences, help="held-out (evaluation) sentences"
    )
    corpus.add_argument("--dev-sentences", type=int, default=corpus_defaults.dev_sentences, help="validation sentences")
    corpus.add_argument(
        "--train-per-voice",
        type=int,
        default=corpus_defaults.train_utterances_per_voice,
        help="training utterances per voice",
    )
    corpus.add_argument(
        "--test-per-voice",
        type=int,
        default=corpus_defaults.test_utterances_per_voice,
        help="held-out utterances per voice",
    )
    corpus.add_argument(
        "--dev-per-voice",
        type=int,
        default=corpus_defaults.dev_utterances_per_voice,
        help="validation utterances per voice",
    )
    corpus.add_argument(
        "--seed",
        type=int,
        default=corpus_defaults.seed,
        help="seed of the sentence split and of each utterance's draws",
    )
    corpus.set_defaults(func=_corpus)

    evalset = steps.add_parser("evalset", help="write the fixed 1/2/3-speaker evaluation set with references")
    evalset.add_argument(
        "--corpus",
        type=Path,
        default=WORK_DIR / "corpus",
        help="corpus folder (mtasr train corpus; default %(default)s)",
    )
    evalset.add_argument(
        "--out", type=Path, help=f"default {WORK_DIR / 'evalset'}, with --selection {WORK_DIR / 'selection_set'}"
    )
    evalset.add_argument(
        "--selection",
        action="store_true",
        help="write the selection set instead: sessions of the validation sentences, for choosing between "
        "candidate models apart from the reported set (mtasr evaluate --evalset it)",
    )
    evalset.set_defaults(func=_evalset)

    asr = steps.add_parser("asr", help="train or fine-tune the multitalker RNNT on simulated mixtures")
    asr.add_argument(
        "--stage",
        choices=tuple(ASR_STAGES),
        default="mixtures",
        help="which stage of the default curriculum: single speakers (from scratch), mixtures at every latency "
        "(from scratch: at the serving latency only), mixtures again from a fresh warm-up, twice, then "
        "conversations mixed in, then half of each batch masked by the diarizer, twice, then three rows in "
        "four, then half again, then two siblings of that stage from it (each needs --init-from; `train defaults` "
        "installs the mean of the last three); "
        "default %(default)s",
    )
    asr.add_argument(
        "--diarizer",
        type=Path,
        help="the diarizer .nemo the pair is served with: its speaker masks train the diarizer_masks stage",
    )
    _add_per_stage_option(
        asr,
        "--diarizer-mask-share",
        "share of each batch's rows given the diarizer's speaker masks instead of the oracle ones",
        ASR_STAGES,
        "diarizer_masks",
    )
    _add_train_options(asr, ASR_TRAIN, of="for the single-speaker stage")
    asr.set_defaults(func=_asr)

    diar = steps.add_parser("diarizer", help="train or fine-tune the Streaming Sortformer on simulated mixtures")
    diar.add_argument(
        "--stage",
        choices=tuple(DIARIZER_STAGES),
        default="mixtures",
        help="which stage of the default curriculum: lsmix mixtures (from scratch), then short conversations "
        "mixed in, then minute-long ones, then mostly short ones again from a fresh warm-up, then those with the "
        "voice head, and those again, then longer conversations of mostly three and four speakers; the later six "
        "fine-tune the one before (--init-from)",
    )
    _add_train_options(diar, DIARIZER_TRAIN, of="for the mixture stage")
    _add_per_stage_option(
        diar,
        "--voice-head-weight",
        "weight of the training-only voice head, which classifies the corpus voice of every frame with one speaker",
        DIARIZER_STAGES,
        "voice_head_weight",
    )
    diar.set_defaults(func=_diarizer)

    defaults = steps.add_parser(
        "defaults", help="reproduce the default pair: corpus, both models, export, evaluation; prints wall time"
    )
    defaults.add_argument("--work-dir", type=Path, default=WORK_DIR)
    defaults.add_argument(
        "--asr-steps",
        type=int,
        help="steps of each ASR stage (default: each stage's own: "
        + ", ".join(f"{name} {recipe.train.max_steps}" for name, recipe in ASR_STAGES.items())
        + ")",
    )
    defaults.add_argument(
        "--diarizer-steps",
        type=int,
        help="steps of each diarizer stage (default: each stage's own: "
        + ", ".join(f"{name} {recipe.train.max_steps}" for name, recipe in DIARIZER_STAGES.items())
        + ")",
    )
    defaults.add_argument(
        "--install",
        action="store_true",
        help="replace the committed model_repository/ and demo conversation with the result",
    )
    defaults.set_defaults(func=_defaults)


def add_evaluate_parser(sub) -> None:
    """`evaluate`: a model repository on the evaluation set."""
    ev = sub.add_parser("evaluate", help="WER/cpWER/DER of a model repository on the evaluation set (served)")
    ev.add_argument("model_repository", type=Path)
    ev.add_argument("--evalset", type=Path, default=WORK_DIR / "evalset")
    ev.add_argument("--out", type=Path, default=WORK_DIR / "evaluation")
    ev.add_argument("--jobs", type=int, default=2)
    ev.set_defaults(func=_evaluate)
