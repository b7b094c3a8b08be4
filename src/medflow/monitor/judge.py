"""One model tag's window against its reference: the input rules, the PSI and live
performance, each judged or said why not."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from medflow.config import Params
from medflow.monitor.inputs import judge_inputs, production_profile
from medflow.monitor.performance import auroc_drop_rule, live_performance
from medflow.monitor.psi import ProbabilityShift, probability_shift
from medflow.monitor.reference import ModelReference
from medflow.monitor.result import ModelMonitoring, docs_slug
from medflow.monitor.rules import INPUT_RULES, PSI, Rule, not_judged


def monitor_model(
    model_tag: str, rows: pd.DataFrame, ref: ModelReference, params: Params, docs_root: Path
) -> ModelMonitoring:
    """One model tag's predictions in the window (prediction log rows) against its reference;
    the input suites' Data Docs go to docs_root/<model tag>/."""
    p = params.monitor
    class_names = [str(c) for c in rows["class_names"].iloc[-1]]
    probs = np.array(rows["probabilities"].to_list(), dtype=float)
    notes: list[str] = []
    threshold = _threshold(rows, ref, notes)
    n = len(rows)

    reference = ref.reference
    why_not = None
    if reference is None:
        why_not = ref.missing or "no monitoring reference"
    elif reference.class_names != class_names:
        why_not = (
            f"the reference's classes {reference.class_names} are not the predictions'"
            f" {class_names}"
        )
    elif n < p.min_predictions:
        why_not = (
            f"{n} predictions in the window, fewer than monitor.min_predictions {p.min_predictions}"
        )

    inputs, shift, production = None, None, None
    try:
        production = production_profile(rows, class_names)
    except ValueError as exc:
        notes.append(f"no production profile: {exc}")
    drift_params = params.validate_.drift
    if why_not is None and production is not None and reference is not None:
        inputs = judge_inputs(
            reference.profile, production, drift_params, docs_root / docs_slug(model_tag)
        )
        rules = list(inputs.rules)
    else:
        reason = why_not or "no production profile"
        rules = [not_judged(c, getattr(drift_params, c).max_change, reason) for c in INPUT_RULES]

    if why_not is None and reference is not None:
        try:
            shift = probability_shift(
                np.array(reference.probabilities), probs, class_names, p.psi_bins, p.max_psi
            )
        except ValueError as exc:
            rules.append(not_judged(PSI, p.max_psi, str(exc)))
        else:
            rules.append(_psi_rule(shift, p.max_psi))
    else:
        rules.append(not_judged(PSI, p.max_psi, why_not or "no reference"))

    labelled = rows["feedback_label_index"].notna().to_numpy()
    labels = rows.loc[labelled, "feedback_label_index"].to_numpy(dtype=np.int64)
    performance = None
    if labelled.any():
        # repeat predictions of an image resample together; numbered in order of appearance,
        # not by the hash text, so that the intervals do not depend on the log's hash key
        groups = pd.factorize(rows.loc[labelled, "image_hash"])[0] if "image_hash" in rows else None
        performance = live_performance(
            labels, probs[labelled], threshold, class_names, params.evaluate, groups
        )
    rules.append(auroc_drop_rule(performance, ref.evaluated.get("auroc"), p))

    return ModelMonitoring(
        model_tag=model_tag,
        class_names=class_names,
        threshold=threshold,
        n_predictions=n,
        predicted_per_class=_per_class(rows["label_index"], class_names),
        reference=ref,
        rules=rules,
        inputs=inputs,
        shift=shift,
        performance=performance,
        production=production,
        probabilities=probs,
        intensity=rows[["modality", "pixel_mean"]].reset_index(drop=True),
        feedback_labels=labels,
        feedback_probabilities=probs[labelled],
        notes=notes,
    )


def _psi_rule(shift: ProbabilityShift, max_psi: float) -> Rule:
    worst = shift.per_class[shift.column]
    return Rule(
        name=PSI,
        judged=True,
        broken=shift.score > max_psi,
        score=shift.score,
        threshold=max_psi,
        detail=(
            f"PSI of p({shift.column}) {shift.score:.3f}"
            + (f" > {max_psi:g}" if shift.score > max_psi else f" <= {max_psi:g}")
            + f": {shift.n_production} production against {shift.n_reference} test-split"
            f" predictions, {worst.bins_note}; about {worst.noise:.3f} is expected from"
            " sampling alone"
        ),
    )


def _threshold(rows: pd.DataFrame, ref: ModelReference, notes: list[str]) -> float:
    """The threshold the predictions were decided with (the most common one logged), else the
    reference's, else 0.5 (said in notes)."""
    logged = pd.to_numeric(rows["threshold"], errors="coerce").dropna()
    if not logged.empty:
        counts = Counter(logged.round(9))
        chosen = float(counts.most_common(1)[0][0])
        if len(counts) > 1:
            notes.append(
                f"the window's predictions were decided with {len(counts)} thresholds:"
                f" sensitivity and specificity are at the most common, {chosen:g}"
            )
        return chosen
    if ref.reference is not None:
        return ref.reference.threshold
    notes.append("no threshold logged nor in a reference: sensitivity/specificity at 0.5")
    return 0.5


def _per_class(labels: pd.Series, class_names: list[str]) -> dict[str, int]:
    counts = labels.astype(int).value_counts()
    return {name: int(counts.get(i, 0)) for i, name in enumerate(class_names)}
