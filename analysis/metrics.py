"""COCO caption metrics through pycocoevalcap, tokenised once and scored on any subset cheaply.

This is the one place that knows about PTB tokenisation, the x100 convention and which metrics can
run on this machine. The numbers are pycocoevalcap's own: its tokenizer, its BLEU/CIDEr-D scorer
classes fed with n-gram counts cooked once, its METEOR jar (one JVM per ``CaptionScorer``, its
per-pair statistics computed once and aggregated per subset by the jar's own ``EVAL``), its ROUGE-L.

    with CaptionScorer() as scorer:
        corpus = scorer.prepare(ids, predictions, references)
        scorer.score(corpus)              # {"BLEU-1": ..., "CIDEr-D": ..., "SPICE": None}, x100
        scorer.score(corpus, [0, 4, 7])   # the subset re-scored as its own corpus
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.bleu.bleu_scorer import cook_refs as bleu_cook_refs
from pycocoevalcap.bleu.bleu_scorer import cook_test as bleu_cook_test
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.cider.cider_scorer import cook_refs as cider_cook_refs
from pycocoevalcap.cider.cider_scorer import cook_test as cider_cook_test
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from analysis.resample import CiderStats

# The report's metric names, in the order papers print them.
METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")
HEADLINE: tuple[str, ...] = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")
# The headline metrics every machine can compute (SPICE needs Java and a model download): what the app
# and the model cards show.
SHOWN_METRICS: tuple[str, ...] = tuple(m for m in HEADLINE if m != "SPICE")

_PKG_DIR = Path(__import__("pycocoevalcap").__path__[0])
SPICE_JARS = (
    _PKG_DIR / "spice" / "lib" / "stanford-corenlp-3.6.0.jar",
    _PKG_DIR / "spice" / "lib" / "stanford-corenlp-3.6.0-models.jar",
)
SPICE_HINT = (
    "SPICE needs Stanford CoreNLP 3.6.0: put stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar "
    "(from stanford-corenlp-full-2015-12-09.zip) into the installed pycocoevalcap's spice/lib folder "
    "(`m3diff doctor` names it)"
)  # no path of this machine: the line is stored in reports, which the app shows to anyone
# Java ends a line at any of these; pycocoevalcap only replaces "\n", so a caption holding one of the
# others shifts every later caption onto the wrong id. We replace them all with a space.
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


@dataclass(frozen=True)
class MetricAvailability:
    """Which metrics can run here, and the one line saying how to enable a missing one."""

    java: bool
    meteor: bool
    spice: bool
    notes: tuple[str, ...] = ()

    @property
    def runnable(self) -> tuple[str, ...]:
        out = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"] if self.java else []
        out += ["METEOR"] if self.meteor else []
        out += ["SPICE"] if self.spice else []
        return tuple(m for m in METRICS if m in out)


def check_metrics() -> MetricAvailability:
    """Look (without running anything heavy, never downloading) at what the metrics need."""
    notes = []
    java = shutil.which("java") is not None
    if not java:
        notes.append("Java not found: the PTB tokenizer, METEOR and SPICE need it (e.g. apt-get install default-jre-headless)")
    meteor = java and (_PKG_DIR / "meteor" / "meteor-1.5.jar").exists() and (
        _PKG_DIR / "meteor" / "data" / "paraphrase-en.gz").exists()
    if java and not meteor:
        notes.append(f"METEOR's jar or paraphrase table is missing under {_PKG_DIR / 'meteor'}: reinstall pycocoevalcap")
    spice = java and all(p.exists() for p in SPICE_JARS) and (_PKG_DIR / "spice" / "spice-1.0.jar").exists()
    if not spice:
        notes.append(SPICE_HINT)
    return MetricAvailability(java=java, meteor=meteor, spice=spice, notes=tuple(notes))


@dataclass(frozen=True)
class ScorerConfig:
    meteor: bool = True
    spice: bool | None = None  # None: use SPICE when its jars are present; True: fail if they are not
    bleu_option: str = "closest"  # what pycocoevalcap's Bleu wrapper passes
    # pycocoevalcap's own CiderScorer instead of the same formula as sparse products; they agree to
    # ~1e-13 (tests), the products are ~20x faster on a 13-slice breakdown
    reference_cider: bool = False


@dataclass
class PreparedCorpus:
    """Predictions and references tokenised once, with every subset-independent statistic cached."""

    ids: list[str]
    hyps: list[str]  # PTB-tokenised, lower-cased, punctuation removed
    refs: list[list[str]]
    bleu_crefs: list = field(repr=False)
    bleu_ctest: list = field(repr=False)
    cider_crefs: list = field(repr=False)
    cider_ctest: list = field(repr=False)
    cider_stats: CiderStats = field(repr=False)
    rouge: np.ndarray = field(repr=False)  # [N] ROUGE-L per pair (the corpus score is their mean)
    sentence_bleu: np.ndarray = field(repr=False)  # [N, 4] BLEU-1..4 per pair (pycocoevalcap's smoothing)
    bleu_stats: np.ndarray = field(repr=False)  # [N, 10] testlen, reflen(closest), guess1-4, correct1-4
    meteor_stats: list[str] | None = field(default=None, repr=False)  # the jar's SCORE lines, one per pair
    meteor: np.ndarray | None = field(default=None, repr=False)  # [N] METEOR per pair
    spice: np.ndarray | None = field(default=None, repr=False)  # [N] SPICE F per pair

    _pending: tuple | None = field(default=None, repr=False)  # (METEOR thread, its result dict)

    def __len__(self) -> int:
        return len(self.ids)

    def finish(self) -> "PreparedCorpus":
        """Wait for the METEOR statistics still being computed in the background (if any)."""
        if self._pending is not None:
            thread, result = self._pending
            if thread is not None:
                thread.join()
            self._pending = None
            if "error" in result:
                raise result["error"]
            self.meteor_stats, self.meteor = result.get("stats"), result.get("seg")
        return self

    def index(self, ids) -> list[int]:
        pos = {k: i for i, k in enumerate(self.ids)}
        return [pos[k] for k in ids]


class CaptionScorer:
    """Holds the METEOR JVM for its lifetime; close it (or use ``with``) when done.

    The JVM starts in the background when the scorer is made, so its ~7 s start-up overlaps with
    tokenisation and the Python-side scorers.
    """

    def __init__(self, config: ScorerConfig | None = None, availability: MetricAvailability | None = None):
        self.config = config or ScorerConfig()
        self.availability = availability or check_metrics()
        if not self.availability.java:
            raise RuntimeError(self.availability.notes[0])
        if self.config.spice and not self.availability.spice:
            raise RuntimeError(SPICE_HINT)
        self.use_meteor = self.config.meteor and self.availability.meteor
        self.use_spice = self.availability.spice if self.config.spice is None else self.config.spice
        self._meteor = None
        self._lock = threading.Lock()
        if self.use_meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        m, self._meteor = self._meteor, None
        if m is not None:
            # pycocoevalcap's own __del__ does the same when the object is collected; doing it now
            # frees the 2 GB heap reservation at a predictable time.
            with self._lock:
                try:
                    m.meteor_p.stdin.close()
                except OSError:
                    pass
                m.meteor_p.kill()
                m.meteor_p.wait()
                m.meteor_p.stdin = _Closed()

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tokenisation -----------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[str]:
        """PTB-tokenise many strings in one Java call, exactly as COCOEvalCap does."""
        if not texts:
            return []
        data = {i: [{"caption": t.translate(_LINE_BREAKS)}] for i, t in enumerate(texts)}
        with _quiet_stderr():
            out = PTBTokenizer().tokenize(data)
        if len(out) != len(texts):
            raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(texts)} captions")
        # the tokenizer drops ids whose line it did not print; they can only be empty strings
        return [out.get(i, [""])[0] for i in range(len(texts))]

    # -- preparation ------------------------------------------------------------------------------
    def prepare(self, ids, hyps, refs, tokenized: bool = False) -> PreparedCorpus:
        """Tokenise once and compute everything about each pair that does not depend on the subset."""
        ids = [str(i) for i in ids]
        hyps, refs = list(hyps), [list(r) for r in refs]
        if not (len(ids) == len(hyps) == len(refs)):
            raise ValueError(f"{len(ids)} ids, {len(hyps)} predictions and {len(refs)} reference lists")
        if any(len(r) == 0 for r in refs):
            raise ValueError("every pair needs at least one reference caption")
        if not tokenized:
            # Two calls, references then predictions, as COCOEvalCap makes them: Stanford's tokenizer
            # looks across lines ("a." before a lower-case line stays one token), so only the same
            # neighbours give pycocoevalcap's tokens. Slices reuse these tokens (one per caption).
            flat = self.tokenize([c for r in refs for c in r])
            hyps, pos = self.tokenize(hyps), 0
            tok_refs = []
            for r in refs:
                tok_refs.append(flat[pos: pos + len(r)])
                pos += len(r)
            refs = tok_refs

        meteor_result: dict = {}
        meteor_thread = None
        if self._meteor is not None:
            # The JVM scores every pair while this thread cooks n-grams, runs ROUGE-L and (in
            # ``analysis.breakdown``) the other metrics of every slice; pipes release the GIL.
            meteor_thread = threading.Thread(target=self._meteor_all, args=(hyps, refs, meteor_result), daemon=True)
            meteor_thread.start()
        bleu_crefs = [bleu_cook_refs(r) for r in refs]
        bleu_ctest = [bleu_cook_test(h, cr) for h, cr in zip(hyps, bleu_crefs)]
        cider_crefs = [cider_cook_refs(r) for r in refs]
        cider_ctest = [cider_cook_test(h) for h in hyps]
        rouge = np.array([rouge_l(h, r) for h, r in zip(hyps, refs)], dtype=float)
        cider_stats = CiderStats.build(cider_crefs, cider_ctest)
        bs = BleuScorer(n=4)
        bs.crefs, bs.ctest = list(bleu_crefs), list(bleu_ctest)
        _, per = bs.compute_score(option=self.config.bleu_option, verbose=0)
        sentence_bleu = np.array(per, dtype=float).T.reshape(len(hyps), 4)
        bleu_stats = np.array(
            [[c["testlen"], bs._single_reflen(c["reflen"], self.config.bleu_option, c["testlen"]),
              *c["guess"], *c["correct"]] for c in bleu_ctest], dtype=float).reshape(len(hyps), 10)
        corpus = PreparedCorpus(
            ids=ids, hyps=hyps, refs=refs, bleu_crefs=bleu_crefs, bleu_ctest=bleu_ctest,
            cider_crefs=cider_crefs, cider_ctest=cider_ctest, cider_stats=cider_stats, rouge=rouge,
            sentence_bleu=sentence_bleu, bleu_stats=bleu_stats,
        )
        corpus._pending = (meteor_thread, meteor_result)
        if self.use_spice:
            corpus.spice = self._spice_all(hyps, refs)
        return corpus

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, corpus: PreparedCorpus, indices=None, meteor: bool = True) -> dict[str, float | None]:
        """Every metric on the subset (all pairs by default) re-scored as its own corpus, x100.

        BLEU is corpus-level on the subset; CIDEr-D's document frequencies come from the subset's
        references; METEOR is the jar's aggregate over the subset; ROUGE-L and SPICE are means.
        """
        idx = list(range(len(corpus))) if indices is None else [int(i) for i in indices]
        if not idx:
            raise ValueError("cannot score an empty subset")
        out: dict[str, float | None] = dict.fromkeys(METRICS)
        bs = BleuScorer(n=4)
        bs.crefs = [corpus.bleu_crefs[i] for i in idx]
        bs.ctest = [corpus.bleu_ctest[i] for i in idx]
        bleus, _ = bs.compute_score(option=self.config.bleu_option, verbose=0)
        for k in range(4):
            out[f"BLEU-{k + 1}"] = 100.0 * float(bleus[k])
        if meteor:
            out["METEOR"] = self.meteor(corpus, idx)
        out["ROUGE-L"] = 100.0 * float(np.mean(corpus.rouge[idx]))
        out["CIDEr-D"] = 100.0 * float(self.cider(corpus, idx)[0])
        if corpus.spice is not None:
            out["SPICE"] = 100.0 * float(np.mean(corpus.spice[idx]))
        return out

    def meteor(self, corpus: PreparedCorpus, indices=None) -> float | None:
        """The jar's METEOR aggregate over the subset, x100 (None when METEOR is off)."""
        corpus.finish()
        if corpus.meteor_stats is None:
            return None
        if self._meteor is None:
            raise RuntimeError("this scorer was closed; METEOR needs its JVM")
        idx = range(len(corpus)) if indices is None else indices
        return 100.0 * self._meteor_eval([corpus.meteor_stats[int(i)] for i in idx])[0]

    def cider(self, corpus: PreparedCorpus, indices=None) -> tuple[float, np.ndarray]:
        """CIDEr-D on the subset as its own corpus: (corpus score, per-pair scores), not x100."""
        idx = list(range(len(corpus))) if indices is None else [int(i) for i in indices]
        if not self.config.reference_cider:
            per = corpus.cider_stats.subset(idx).per_pair(np.ones((1, len(idx))))[0]
            return float(np.mean(per)), per
        cs = CiderScorer(n=4, sigma=6.0)
        cs.crefs = [corpus.cider_crefs[i] for i in idx]
        cs.ctest = [corpus.cider_ctest[i] for i in idx]
        score, scores = cs.compute_score()
        return float(score), np.asarray(scores, dtype=float)

    # -- METEOR -----------------------------------------------------------------------------------
    def _meteor_all(self, hyps, refs, result: dict) -> None:
        try:
            stats = self._meteor_stats(hyps, refs)
            seg, _ = self._meteor_eval(stats, per_segment=True)
            result["stats"], result["seg"] = stats, seg
        except Exception as exc:  # re-raised in the calling thread
            result["error"] = exc

    def _meteor_stats(self, hyps, refs, chunk: int = 32) -> list[str]:
        # The same SCORE lines as pycocoevalcap's Meteor._stat, written a chunk at a time: one
        # round-trip per chunk instead of per pair. A chunk's answers (~100 bytes each) always fit
        # the pipe, so the JVM never blocks on us while we write.
        p = self._meteor.meteor_p
        out: list[str] = []
        with self._lock:
            for start in range(0, len(hyps), chunk):
                lines = []
                for h, r in zip(hyps[start:start + chunk], refs[start:start + chunk]):
                    h = h.replace("|||", "").replace("  ", " ")
                    r = [x.replace("|||", "") for x in r]
                    lines.append(" ||| ".join(("SCORE", " ||| ".join(r), h)) + "\n")
                p.stdin.write("".join(lines).encode())
                p.stdin.flush()
                for _ in lines:
                    out.append(_readline(p))
        return out

    def _meteor_eval(self, stats: list[str], per_segment: bool = False):
        """The jar's EVAL over the given SCORE statistics: (aggregate, per-segment scores)."""
        p = self._meteor.meteor_p
        with self._lock:
            p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
            p.stdin.flush()
            seg = [float(_readline(p)) for _ in stats]
            agg = float(_readline(p))
        return (np.array(seg) if per_segment else agg), agg

    # -- SPICE ------------------------------------------------------------------------------------
    @staticmethod
    def _spice_all(hyps, refs) -> np.ndarray:
        # Only reached when the CoreNLP jars are present (check_metrics), so Spice() cannot download.
        from pycocoevalcap.spice.spice import Spice

        gts = {i: r for i, r in enumerate(refs)}
        res = {i: [h] for i, h in enumerate(hyps)}
        _, per = Spice().compute_score(gts, res)
        return np.array([p["All"]["f"] for p in per], dtype=float)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence of two token lists, bit-parallel (Hyyrö 2004).

    The same integer as pycocoevalcap's ``my_lcs`` (tests), in O(len(b)) big-integer steps instead of
    a Python double loop; ROUGE-L on 60-word captions was the slowest part of scoring.
    """
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(candidate: str, refs: list[str], beta: float = 1.2) -> float:
    """pycocoevalcap's ``Rouge.calc_score`` for one tokenised candidate, with a fast LCS."""
    token_c = candidate.split(" ")
    prec, rec = [], []
    for reference in refs:
        token_r = reference.split(" ")
        lcs = lcs_length(token_r, token_c)
        prec.append(lcs / float(len(token_c)))
        rec.append(lcs / float(len(token_r)))
    prec_max, rec_max = max(prec), max(rec)
    if prec_max != 0 and rec_max != 0:
        return ((1 + beta ** 2) * prec_max * rec_max) / float(rec_max + beta ** 2 * prec_max)
    return 0.0


def score_captions(predictions: dict[str, str], references: dict[str, list[str]],
                   config: ScorerConfig | None = None) -> dict[str, float | None]:
    """One-shot convenience: overall scores (x100) for {id: caption} against {id: [captions]}."""
    ids = list(predictions)
    with CaptionScorer(config) as scorer:
        corpus = scorer.prepare(ids, [predictions[i] for i in ids], [references[i] for i in ids])
        return scorer.score(corpus)


class _Closed:
    """Stands in for a closed pipe so pycocoevalcap's Meteor.__del__ has nothing left to do."""

    def close(self) -> None:
        pass


def _readline(p: subprocess.Popen) -> str:
    line = p.stdout.readline()
    if not line:
        err = p.stderr.read(2000).decode(errors="replace") if p.poll() is not None else ""
        raise RuntimeError(f"the METEOR process stopped answering{': ' + err.strip() if err else ''}")
    return line.decode().strip()


class _quiet_stderr:
    """PTBTokenizer's Java prints a token-rate line on stderr for every call; keep the CLI clean."""

    def __enter__(self):
        self._saved = os.dup(2)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 2)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._null)


# -- CIDEr-D of one caption, at once (no Java) -------------------------------------------------------------
# PTB tokenisation (what pycocoevalcap's tokenizer does to a caption) without starting a JVM: lower-case,
# clitics split off ("did n't", "sign 's"), punctuation dropped, hyphenated words kept whole. It agrees with
# the PTB tokenizer on the generator's references (tests/analysis/test_madepair.py); the app's "Make a
# pair" scores one caption in well under the ~0.4 s a PTB call costs.
_PTB_LIKE = re.compile(r"[^\W_]+?(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:-[^\W_]+)*")


def ptb_like(text: str) -> str:
    """``text`` tokenised as pycocoevalcap's PTB tokenizer does it, in Python (see above)."""
    return " ".join(_PTB_LIKE.findall((text or "").lower()))


class CiderBackground:
    """CIDEr-D of single captions with the document frequencies of a background corpus of references.

    CIDEr-D of one pair scored alone is 0 whatever the caption (every n-gram of its references has a
    document frequency of 1 in a corpus of one); scored among the references of a data set's pairs it is
    what that pair would get in an evaluation of that set. An explicit object: build it once, score many."""

    def __init__(self, references: list[list[str]]):
        if not references:
            raise ValueError("CIDEr-D needs a background corpus of at least one pair's references")
        self._crefs = [cider_cook_refs([ptb_like(r) for r in refs]) for refs in references]
        self._df: dict = {}
        for refs in self._crefs:  # in how many pairs' references each n-gram occurs (pycocoevalcap's rule)
            for ngram in {g for ref in refs for g in ref}:
                self._df[ngram] = self._df.get(ngram, 0.0) + 1
        self.size = len(references)

    def score(self, caption: str, references: list[str]) -> float:
        """CIDEr-D x100 of ``caption`` against ``references``, with the background's document frequencies
        (the pair itself included, as one more document): pycocoevalcap's own formula, computed for this
        one pair only (its ``compute_cider`` zips tests with references, so one test scores one pair)."""
        item = cider_cook_refs([ptb_like(r) for r in references])
        df = defaultdict(float, self._df)
        for ngram in {g for ref in item for g in ref}:
            df[ngram] += 1
        cs = CiderScorer(n=4, sigma=6.0)
        cs.crefs = [item] + self._crefs  # ref_len = log(number of documents) counts them all
        cs.ctest = [cider_cook_test(ptb_like(caption))]
        cs.document_frequency = df
        return 100.0 * float(cs.compute_cider()[0])
