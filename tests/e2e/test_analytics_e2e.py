"""Analytics through the real daemon: drift crosses 0.25 on a shifted feature, accuracy follows a drop."""

import random

import orjson

from tests.harness import total, wait_for

CONFIG = """
[analytics]
compute_interval = 0.2

[analytics.performance]
window_size = 200

[analytics.drift]
statistic = "psi"
reference_size = 1000
window_size = 1000
min_samples = 200

[analytics.models.fraud.features.amount]
type = "numeric"
min = 0.0
"""


def events(n, rng, amount_mean, accuracy, start_id):
    out = []
    for i in range(n):
        y_true = rng.choice(["fraud", "ok", "review"])
        y_pred = y_true if rng.random() < accuracy else rng.choice(
            [c for c in ("fraud", "ok", "review") if c != y_true])
        out.append({"event": "prediction", "model": "fraud", "version": "v1", "latency_s": 0.01,
                    "prediction_id": start_id + i, "y_pred": y_pred, "y_true": y_true,
                    "features": {"amount": abs(rng.gauss(amount_mean, 10.0)),
                                 "stable": rng.gauss(0.0, 1.0)}})
    return out


def write(path, evs):
    with open(path, "ab") as fh:
        fh.write(b"".join(orjson.dumps(e) + b"\n" for e in evs))


HEARTBEAT = b'{"event":"prediction","model":"heartbeat","latency_s":0.01}\n'


def scrape_live(sc, log):
    """Scrape, then append one plain prediction: a live workload keeps the worker ticking.

    (The worker recomputes derived gauges on its per-chunk tick; with no lines at all it
    does not tick, so a burst followed by silence would otherwise leave the last compute
    up to compute_interval behind.)
    """
    s = sc.scrape()
    with open(log, "ab") as fh:
        fh.write(HEARTBEAT)
    return s


def gauge(s, name, **labels):
    return total(s, name, model_name="fraud", model_version="v1", **labels)


def test_drift_and_accuracy_follow_the_stream(tmp_path, sidecar_factory):
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    log = tmp_path / "events.jsonl"
    log.touch()
    sc = sidecar_factory("--tail", str(log), config=str(cfg)).start()
    rng = random.Random(5)

    # Phase 1: the first 1000 values become the reference, then 1000 more from the same distribution.
    write(log, events(2000, rng, 100.0, 0.9, 0))
    s = sc.wait_value("ml_model_labelled_predictions_total", 2000)

    def stable_phase():
        s = scrape_live(sc, log)
        a = gauge(s, "ml_model_accuracy_score", dataset="live")
        d = gauge(s, "ml_feature_drift_window_samples", feature_name="amount")
        return (d == 1000 and 0.8 <= a <= 0.97) and s
    s = wait_for(stable_phase, 20, what="phase-1 gauges")
    assert gauge(s, "ml_feature_drift_score", feature_name="amount") < 0.1
    assert gauge(s, "ml_feature_drift_score", feature_name="stable") < 0.1
    assert gauge(s, "ml_data_quality_score", quality_metric="sidecar_overall") == 1.0
    assert gauge(s, "ml_model_correct_predictions_total") == total(
        s, "ml_model_class_true_positives_total", model_name="fraud")

    # Phase 2: amount shifts by 2 standard deviations and accuracy drops to about 40%.
    write(log, events(1000, rng, 120.0, 0.4, 2000))
    sc.wait_value("ml_model_labelled_predictions_total", 3000)

    def shifted():
        s = scrape_live(sc, log)
        return (gauge(s, "ml_feature_drift_score", feature_name="amount") > 0.25
                and gauge(s, "ml_model_accuracy_score", dataset="live") < 0.55) and s
    s = wait_for(shifted, 20, what="drift > 0.25 and accuracy drop")
    assert gauge(s, "ml_feature_drift_score", feature_name="stable") < 0.1
    assert gauge(s, "ml_feature_drift_psi", feature_name="amount") > 0.25
    assert gauge(s, "ml_feature_drift_ks_statistic", feature_name="amount") > 0.4
    acc = gauge(s, "ml_model_accuracy_score", dataset="live")
    assert 0.25 <= acc < 0.55
    # counters agree with the stream: correct / labelled over all 2500
    assert gauge(s, "ml_model_labelled_predictions_total") == 3000
    assert total(s, "ml_predictions_total", model_name="fraud") == 3000


def test_labels_joined_from_label_events(tmp_path, sidecar_factory):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[analytics]\ncompute_interval = 0.2\n[analytics.performance]\nlabel_ttl = 60\n")
    log = tmp_path / "events.jsonl"
    log.touch()
    sc = sidecar_factory("--tail", str(log), config=str(cfg)).start()
    preds = [{"event": "prediction", "model": "m", "latency_s": 0.01, "prediction_id": f"id{i}",
              "y_pred": "a" if i % 4 else "b"} for i in range(100)]
    labels = [{"event": "label", "prediction_id": f"id{i}", "y_true": "a"} for i in range(100)]
    labels.append({"event": "label", "prediction_id": "nobody", "y_true": "a"})
    write(log, preds)
    write(log, labels)
    s = sc.wait_value("mlsidecar_label_joins_total", 100, result="matched")
    assert total(s, "mlsidecar_label_joins_total", result="unmatched") == 1
    s = wait_for(lambda: (lambda s: total(s, "ml_model_accuracy_score", model_name="m") == 0.75 and s)(
        scrape_live(sc, log)), 20, what="accuracy 0.75")
    assert total(s, "ml_model_labelled_predictions_total", model_name="m") == 100
