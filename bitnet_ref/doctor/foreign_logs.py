"""Training logs written by other trainers, read as a run the doctor can judge.

``python -m bitnet_ref.doctor --log FILE --vocab-size V`` reads a CSV, a TSV, a JSON-lines file or a Markdown
table (the kind pasted into reports, like the debugging report's) of a run trained anywhere, and the files
trainers write, with the format detected (``read_any``): a Hugging Face ``trainer_state.json`` (hf_state.py),
TensorBoard event files or their directory (tensorboard_log.py), and a W&B history CSV (exported from its UI);
these three go through trainer_logs.py, which also reads bitnet_ref.watch's ``bitnet/`` figures in them.
Columns of the tables are found by name:
``step``, ``loss`` (train), ``val_loss``, ``unique_tokens``, ``lr``, ``wd``, ``top_token_share``,
``distinct_2``; common spellings are recognised (``Loss``, ``train/loss``, ``eval_loss``, ``Unique Tokens``,
``learning_rate``, ...) and ``--columns step=iter,loss=train_loss_avg`` names others. Cells may use thousands
separators (``1,000``) and Markdown emphasis (``**4**``); a blank cell is a missing value.

What the doctor can tell from such a log is what losses and diversity alone support: not_learning,
stuck_unigram (with the unigram entropy: ``--unigram-entropy`` or ``--data``), diversity_collapse,
transient_dip, diverged, healthy. The causes need the per-layer health metrics of bitnet_ref's own runs; a
note says so. With no ``val_loss`` column, the train loss stands in for it (a note says that too).
Bad input is a one-line ``LogError``: no usable column, a non-numeric cell, steps that repeat or go back.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from bitnet_ref import metrics_log as metrics

FIELDS = {  # our name -> the spellings recognised (compared after lower-casing and squeezing to [a-z0-9])
    "step": ("step", "steps", "iter", "iteration", "globalstep", "trainstep"),
    "loss": ("loss", "trainloss", "trainingloss", "losstrain"),
    "val_loss": ("valloss", "validationloss", "evalloss", "validloss", "lossval", "testloss"),
    "unique_tokens": ("uniquetokens", "unique", "uniq", "nunique", "distincttokens"),
    "lr": ("lr", "learningrate"),
    "wd": ("wd", "weightdecay"),
    "top_token_share": ("toptokenshare", "topshare"),
    "distinct_2": ("distinct2",),
}
NEEDED = ("loss", "val_loss", "unique_tokens")  # at least one of these, beside the step


class LogError(ValueError):
    """An unusable log; the message is one line."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def parse_columns(spec: str | None) -> dict:
    """``"step=iter,loss=train_loss"`` -> {"step": "iter", "loss": "train_loss"}; LogError for anything else."""
    out = {}
    for item in filter(None, (spec or "").split(",")):
        ours, _, theirs = item.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if ours not in FIELDS or not theirs:
            raise LogError(f"--columns takes OURS=THEIRS pairs with OURS one of {', '.join(FIELDS)}; got {item!r}")
        out[ours] = theirs
    return out


def _rows(text: str, suffix: str) -> list[dict]:
    """The log's rows as {column name: cell text}, whatever the format."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    if suffix in (".jsonl", ".json") or lines[0].lstrip().startswith("{"):
        rows = []
        for i, ln in enumerate(lines, 1):
            try:
                rec = json.loads(ln)
            except ValueError:
                raise LogError(f"line {i} is not JSON: {ln[:60]!r}") from None
            if not isinstance(rec, dict):
                raise LogError(f"line {i} is not a JSON object")
            rows.append(rec)
        return rows
    if lines[0].lstrip().startswith("|"):  # a Markdown table: drop the |---| rule and the outer pipes
        cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.lstrip().startswith("|")]
        cells = [r for r in cells if not all(re.fullmatch(r":?-{2,}:?", c) for c in r if c)]
        return [dict(zip(cells[0], r)) for r in cells[1:]]
    delim = "\t" if suffix == ".tsv" or "\t" in lines[0] else ","
    return list(csv.DictReader(io.StringIO("\n".join(lines)), delimiter=delim))


def _number(cell, where: str) -> float | None:
    if cell is None or isinstance(cell, bool):
        return None
    if isinstance(cell, (int, float)):
        return float(cell)
    s = str(cell).strip().strip("*_").replace(",", "").strip()
    if s == "" or s.lower() in ("nan", "null", "none", "-"):
        return math.nan if s.lower() == "nan" else None
    try:
        return float(s)
    except ValueError:
        raise LogError(f"{where}: {str(cell)[:40]!r} is not a number") from None


def _mapping(names: list, given: dict) -> dict:
    """Our field -> the log's column name, from --columns first, then the recognised spellings."""
    by_key = {_key(n): n for n in names}
    out = {}
    for ours, spellings in FIELDS.items():
        if ours in given:
            if given[ours] not in names:
                raise LogError(f"--columns {ours}={given[ours]}: no such column; the log has {', '.join(names)}")
            out[ours] = given[ours]
        else:
            found = next((by_key[k] for k in spellings if k in by_key), None)
            if found is not None:
                out[ours] = found
    return out


def read_any(path, columns: dict | None = None) -> tuple[list, list, dict]:
    """(records, notes, {"vocab_size", "unigram_entropy"} where the log records them) of a log in any format."""
    from bitnet_ref.doctor import hf_state, tensorboard_log, trainer_logs

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise LogError(f"{path}: no such file or directory")
    try:
        if path.is_dir() and (path / "trainer_state.json").is_file():
            path = path / "trainer_state.json"
        if path.is_file() and hf_state.is_trainer_state(path):
            rows, vocab = hf_state.read_state(path)
            kind = "trainer_state.json"
        elif path.is_dir() or tensorboard_log.is_event_file(path):
            rows, vocab = tensorboard_log.read_events(path)
            kind = "TensorBoard events"
        else:
            return (*read_log(path, columns), {})
    except (hf_state.StateError, tensorboard_log.EventsError) as e:
        raise LogError(str(e)) from None
    except OSError as e:
        raise LogError(f"cannot read {path}: {e.strerror or e}") from None
    records, notes = trainer_logs.records(rows, f"{kind} ({path.name})")
    if not records:
        raise LogError(f"{path}: no step with a loss, eval_loss or bitnet_ref figures in this {kind}")
    return records, notes, {"vocab_size": vocab, "unigram_entropy": trainer_logs.logged_unigram_entropy(rows)}


def read_log(path, columns: dict | None = None) -> tuple[list, list]:
    """(records in metrics.jsonl form: step and eval records, notes about how the log was read) of a table."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LogError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    rows = _rows(text, path.suffix.lower())
    names = list(dict.fromkeys(k for r in rows for k in r if k is not None))
    if not columns and _wandb(names):
        return _wandb_records(path, rows, names)
    cols = _mapping(names, columns or {})
    if "step" not in cols or not any(f in cols for f in NEEDED):
        raise LogError(
            f"{path}: no usable columns (need a step column and one of {', '.join(NEEDED)}; found "
            f"{', '.join(names) or 'none'}); name them with --columns step=...,loss=..."
        )
    notes = [f"read {len(rows)} rows of {path.name}: " + ", ".join(f"{k}={v}" for k, v in cols.items())]
    records, last = [], None
    for i, row in enumerate(rows, 1):
        vals = {k: _number(row.get(c), f"{path.name} row {i}, column {c!r}") for k, c in cols.items()}
        step = vals.pop("step")
        if step is None or math.isnan(step):
            raise LogError(f"{path.name} row {i}: no step")
        if last is not None and step <= last:
            raise LogError(
                f"{path.name} row {i}: step {step:g} does not come after step {last:g} (steps must "
                "increase; is this two runs in one file?)"
            )
        last = step
        records += _records(int(step), vals, "val_loss" in cols)
    if "val_loss" not in cols and "loss" in cols:
        notes.append("no val_loss column: the train loss stands in for it")
    return records, notes


def _wandb(names: list) -> bool:
    from bitnet_ref.doctor.trainer_logs import looks_like_wandb

    return looks_like_wandb(names)


def _wandb_records(path: Path, rows: list, names: list) -> tuple[list, list]:
    """A W&B history CSV (the run's history or a chart's export) through trainer_logs' vocabulary."""
    from bitnet_ref.doctor.trainer_logs import canonical, records, step_column

    col = step_column(names)
    if col is None:
        raise LogError(f"{path}: a W&B export without a step column (_step, train/global_step or Step)")
    by_step: dict[int, dict] = {}
    for i, row in enumerate(rows, 1):
        step = _number(row.get(col), f"{path.name} row {i}, column {col!r}")
        if step is None or math.isnan(step):
            continue  # W&B writes rows of other counters with an empty step cell
        into = by_step.setdefault(int(step), {})
        for k, cell in row.items():
            if k is not None and k != col and canonical(k) is not None:
                v = _number(cell, f"{path.name} row {i}, column {k!r}") if _numeric_cell(cell) else None
                if v is not None:
                    into[k] = v
    recs, notes = records(by_step, f"W&B export ({path.name})")
    if not recs:
        raise LogError(
            f"{path}: a W&B export with no usable column (loss, eval/loss or bitnet/...): found {', '.join(names[:8])}"
        )
    return recs, [f"read {len(rows)} rows of {path.name} as a W&B export (step column {col!r})", *notes]


def _numeric_cell(cell) -> bool:
    """W&B histories hold text columns too (run names, media paths): only numbers are read."""
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return True
    s = str(cell or "").strip().strip("*_").replace(",", "")
    return bool(re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(nan|inf|infinity)", s, re.IGNORECASE))


def _records(step: int, vals: dict, has_val: bool) -> list:
    out = []
    if vals.get("loss") is not None:
        out.append(
            {
                "kind": metrics.STEP,
                "step": step,
                "loss": _json_num(vals["loss"]),
                **{k: vals[k] for k in ("lr", "wd") if vals.get(k) is not None},
            }
        )
    ev = {k: vals[k] for k in ("unique_tokens", "top_token_share", "distinct_2") if vals.get(k) is not None}
    val = vals.get("val_loss") if has_val else vals.get("loss")
    if val is not None:
        out.append({"kind": metrics.EVAL, "step": step, "val_loss": _json_num(val), **ev})
    return out


def _json_num(x: float):
    return x if math.isfinite(x) else None  # the trainer records a non-finite loss as null too


def header(vocab_size: int | None, unigram_entropy: float | None) -> dict:
    """The header record a bitnet_ref run would have: ln V and the unigram entropy, where known."""
    if vocab_size is not None and vocab_size < 2:
        raise LogError(f"--vocab-size must be at least 2, got {vocab_size}")
    if unigram_entropy is not None and not (math.isfinite(unigram_entropy) and unigram_entropy > 0):
        raise LogError(f"--unigram-entropy must be a positive number of nats, got {unigram_entropy}")
    return {
        "kind": metrics.HEADER,
        "source": "foreign log",
        "ln_vocab": math.log(vocab_size) if vocab_size else None,
        "unigram_entropy": unigram_entropy,
        "config": {"vocab_size": vocab_size} if vocab_size else {},
    }


NO_CAUSES = (
    "causes (missing_ste, clamp_ste, missing_dequant, quant_head, no_subln, const_wd, flip_not_falling, "
    "zero_drift) need per-layer health metrics that this log does not have: only the verdict is judged"
)
NO_UNIGRAM = (
    "unigram entropy unknown (--unigram-entropy or --data): while the loss is above it, greedy samples "
    "repeat the most frequent tokens (the unigram phase), so a fall in unique tokens there is expected and "
    "is not told apart from a collapse"
)


def load(
    path,
    *,
    columns: dict | None = None,
    vocab_size: int | None = None,
    unigram_entropy: float | None = None,
    data: str | None = None,
    tokenizer: str | None = None,
) -> tuple[metrics.Metrics, list]:
    """A foreign log as parsed metrics (header first) and the notes on how it was read. ``data`` gives the
    unigram entropy: token files with ``vocab_size``, or text, as bytes or through ``tokenizer`` (a
    tokenizer.json, whose vocabulary also stands in for a missing ``vocab_size``)."""
    if tokenizer is not None and data is None:
        raise LogError("--tokenizer tokenizes --data to compute the unigram entropy: pass --data too")
    if data is not None:
        from bitnet_ref.data.corpus import DataError, load_corpus
        from bitnet_ref.data.tokenizer import tokenize_corpus

        try:
            corpus = load_corpus(data, None if tokenizer else vocab_size)
            if tokenizer is not None:
                corpus = tokenize_corpus(corpus, tokenizer)
                if vocab_size is not None and vocab_size < corpus.vocab_size:
                    raise LogError(
                        f"--vocab-size {vocab_size} is smaller than the {corpus.vocab_size} tokens of "
                        f"--tokenizer {tokenizer}"
                    )
                vocab_size = vocab_size or corpus.vocab_size
            unigram_entropy = corpus.unigram_entropy()
        except DataError as e:
            raise LogError(str(e)) from None
    records, notes, found = read_any(path, columns)
    if not records:
        raise LogError(f"{path}: no rows with a loss or unique-token count")
    if vocab_size is None and found.get("vocab_size") is not None:
        vocab_size = found["vocab_size"]
        notes.append(f"vocabulary size {vocab_size} from the log's model config")
    if unigram_entropy is None and found.get("unigram_entropy") is not None:
        unigram_entropy = found["unigram_entropy"]
        notes.append(f"unigram entropy {unigram_entropy:.3f} nats as bitnet_ref.watch measured it on its data")
    head = header(vocab_size, unigram_entropy)
    if not any(isinstance(r.get("layers"), dict) for r in records):
        notes.append(NO_CAUSES)
    if unigram_entropy is None:
        notes.append(NO_UNIGRAM)
    if vocab_size is None:
        notes.append("vocabulary size unknown (--vocab-size): 'not learning' (a loss near ln V) cannot be judged")
    return metrics.Metrics([head] + records, [], False), notes
