"""Features tables as the trainer takes them: the seeds' merged table (one row per snapshot, mean absolute g per
bearing), a creditcard-style labelled table and make_blobs-like labelled tables.

    from tables import write_blobs_table, write_fraud_table, write_seed_table

and a run's features as an agent publishes them, for `cm-train fit TABLE --feature-spec CARD`
(write_published_features).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from edge.model.bundle import FeatureSpec
from edge.model.features import FeatureExtractor, feature_columns
from firmware_bridge.recording import RecordingSpec, open_recording

SEED_HEADER = ",Bearing 1,Bearing 2,Bearing 3,Bearing4"


def write_seed_table(path: Path, rows: int = 120, seed: int = 0, dead_bearing_at: int | None = None) -> Path:
    """The seeds' merged table: one row per 10-minute snapshot, mean absolute g per bearing; bearing 3 fails late."""
    rng = np.random.default_rng(seed)
    level = np.array([0.060, 0.075, 0.082, 0.068]) * np.exp(np.cumsum(rng.normal(0, 0.004, (rows, 4)), axis=0))
    level *= 1 + rng.normal(0, 0.01, (rows, 4))
    growth = np.clip((np.arange(rows) - 0.75 * rows) / (0.25 * rows), 0, None)
    level[:, 2] += 0.08 * growth**2
    if dead_bearing_at is not None:
        level[dead_bearing_at:, 1] = 0.001
    times = pd.date_range("2004-02-12 10:32:39", periods=rows, freq="10min").strftime("%Y-%m-%d %H:%M:%S")
    lines = [SEED_HEADER] + [f"{t},{a:.6f},{b:.6f},{c:.6f},{d:.6f}" for t, (a, b, c, d) in zip(times, level)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_fraud_table(path: Path, rows: int = 600, seed: int = 1) -> Path:
    """creditcard-style: Time,V1..V6,Amount,Class with Class=1 (anomaly) rows far from the normal cloud."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (rows, 6))
    amount = rng.gamma(2.0, 30.0, rows)
    fraud = rng.random(rows) < 0.05
    features[fraud] += rng.choice([-1, 1], (int(fraud.sum()), 6)) * rng.uniform(4, 7, (int(fraud.sum()), 6))
    frame = pd.DataFrame(features, columns=[f"V{i}" for i in range(1, 7)])
    frame.insert(0, "Time", np.sort(rng.uniform(0, 172_000, rows)).round(0))
    frame["Amount"] = amount.round(2)
    frame["Class"] = fraud.astype(int)
    frame.to_csv(path, index=False)
    return path


def write_blobs_table(path: Path, samples: int, random_state: int) -> Path:
    """The classic undercomplete-autoencoder setup: two Gaussian blobs in 15 dimensions, class 1 = anomaly,
    as a table with a time column (seconds) and a label column."""
    from sklearn.datasets import make_blobs  # the dev extra; never used by edge or trainer

    features, labels = make_blobs(n_samples=samples, n_features=15, centers=2, center_box=(-4, 4), cluster_std=1.75,
                                  random_state=random_state)
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(15)])
    frame.insert(0, "time", np.arange(samples))
    frame["label"] = labels
    frame.to_csv(path, index=False)
    return path


def write_published_features(path: Path, run_dir: Path, spec: FeatureSpec, order: str = "reversed") -> Path:
    """A recorded run's features as the agent publishes them and cm-fleet's historian keeps them: computed by
    edge.model.features with the card's spec, rounded to 6 decimals (edge.mqtt.payloads), one row per snapshot
    with its ISO time, the columns named by feature_columns; `order` "reversed" writes them back to front (a
    reader must go by name, not position), "spec" in the spec's own order."""
    recording = open_recording(run_dir, RecordingSpec())
    extractor = FeatureExtractor(spec.feature_config())
    names = feature_columns(spec.feature_set, spec.channels)
    order_of = list(range(len(names)))[::-1] if order == "reversed" else list(range(len(names)))
    lines = ["timestamp," + ",".join(names[i] for i in order_of)]
    for moment, snapshot in zip(recording.times, recording.snapshots()):
        values = extractor(snapshot.counts, snapshot.scale)
        lines.append(moment.strftime("%Y-%m-%dT%H:%M:%SZ") + "," + ",".join(repr(round(float(values[i]), 6)) for i in order_of))
    path.write_text("\n".join(lines) + "\n")
    return path
